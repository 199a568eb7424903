"""Accuracy of a run config on an AOI: train it, score its best checkpoint, record the figures.

Trains the config the way ``python -m bdcore train --config FILE`` does (a run folder under the runs dir and the
detached trainer, so the run can be opened in the app's Review page afterwards), then scores ``best.pt`` on the
run's own val tiles with ``bdcore.inference.evaluate.evaluate_checkpoint`` (pixel IoU and the SpaceNet building F1), appends
one row to ``docs/accuracy.json`` (earlier rows are kept) and renders ``docs/accuracy.md`` from it. Prints the
row as one JSON object.

    python -m bench.accuracy --config configs/paris-psrgb-unet-r34.yaml --data-root ~/data/spacenet/AOI_3_Paris_Train
    python -m bench.accuracy --config configs/paris-psrgb-unet-r34.yaml --data-root demo --device cpu \\
        --encoder resnet18 --crop-size 256 --batch-size 8 --epochs 6 --encoder-weights none --workers 0
    python -m bench.accuracy --run RUN_ID        # score and record a run trained elsewhere (e.g. --detach on a GPU)
    python -m bench.accuracy --render-only       # re-render docs/accuracy.md from docs/accuracy.json

Every RunConfig field is a flag (``--crop-size 256``, ``--boundary false``, ``--encoder-weights none``) that
overrides the config file, as with ``python -m bdcore train``. The row records the overrides, the tiles in the
split, how the encoder was initialised (ImageNet, or random when the weights are not cached: offline machines),
the wall time and the machine (CPU model and cores or GPU name, torch version, date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import sys
import time
import typing
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "accuracy.md"
_NONE = ("none", "null", "")


# --------------------------------------------------------------------------------------------- config


def config_from_args(config: Path | None, overrides: dict):
    """The RunConfig of ``config`` (or the defaults) with ``overrides`` (field -> command-line text) applied."""
    from bdcore.engine.config import RunConfig

    cfg = RunConfig.load(config) if config else RunConfig()
    if not overrides:
        return cfg
    data = cfg.model_dump()
    for name, text in overrides.items():
        optional = type(None) in typing.get_args(RunConfig.model_fields[name].annotation)
        data[name] = None if optional and text.strip().lower() in _NONE else text
    return RunConfig.from_dict(data, source="command-line flags")


def split_counts(cfg) -> dict:
    """Labelled tiles and the run's train/val/buffer split (``bdcore.data.split.config_split``)."""
    from bdcore.data.split import config_split
    from bdcore.inference.evaluate import eval_tiles

    cat, labelled, _ = eval_tiles(cfg, "val")
    split = config_split(cat, cfg, purpose="evaluation")
    train, val, buffer = split.train, split.val, split.buffer
    aois = sorted({str(a) for a in cat["aoi"].dropna()}) if "aoi" in cat.columns else []
    return {"catalog": int(len(cat)), "labelled": int(len(labelled)), "train": len(train), "val": len(val),
            "buffer": len(buffer), "aoi": ", ".join(aois) or Path(cfg.resolved_data_root()).name}


def encoder_init(run_dir: Path) -> str:
    """What the run's encoder started from, as the trainer recorded it (status.json ``weights``)."""
    from bdcore.engine.rundir import read_status

    got = read_status(run_dir).get("weights") or {}
    return str(got.get("summary") or "unknown (run trained before weights were recorded)")


# --------------------------------------------------------------------------------------------- training


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def train_run(cfg, name: str | None, timeout: float | None) -> tuple[Path, float, float]:
    """Create the run folder and run the detached trainer to the end (Ctrl-C stops it, saving last.pt).
    Returns (run folder, wall s, CPU s of the trainer and its loader workers)."""
    from bdcore.engine.rundir import RunDir
    from bdcore.engine.runs import create_run, launch, stop_run, wait_run

    run_dir = create_run(cfg, name=name)
    print(f"[accuracy] training {run_dir.name} (log {RunDir(run_dir).log})", file=sys.stderr, flush=True)
    cpu0 = _children_cpu_s()
    t0 = time.perf_counter()
    launch(run_dir)
    try:
        state = wait_run(run_dir, timeout=timeout, poll=1.0)
    except KeyboardInterrupt:
        print("[accuracy] interrupted: stopping the run (it saves last.pt)", file=sys.stderr, flush=True)
        stop_run(run_dir)
        raise
    wall = time.perf_counter() - t0
    cpu = _children_cpu_s() - cpu0  # the trainer is our child (reaped by wait_run): its CPU time, workers included
    if state not in ("finished",):
        if state == "running":
            stop_run(run_dir)
            state = f"stopped after the {timeout:g} s timeout"
        log = RunDir(run_dir).log
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        raise SystemExit(f"[accuracy] run {run_dir.name} did not finish ({state}); last lines of {log}:\n"
                         + "\n".join(tail))
    return run_dir, wall, cpu


def run_summary(run_dir: Path) -> dict:
    """What the trainer itself recorded: epochs, steps, its best val IoU, img/s, elapsed, device."""
    from bdcore.engine.rundir import read_metrics, read_status

    records = [r for r in read_metrics(run_dir) if r.get("kind") == "epoch"]
    status = read_status(run_dir)
    out = {"epochs_done": len(records), "steps": records[-1]["step"] if records else 0,
           "device": status.get("device"), "state": status.get("state")}
    scored = [r for r in records if r.get("val_iou") is not None]
    if scored:
        best = max(scored, key=lambda r: r["val_iou"])
        out.update(best_epoch=best["epoch"], trainer_best_val_iou=round(best["val_iou"], 4),
                   trainer_best_val_building_f1=(round(best["val_building_f1"], 4)
                                                 if best.get("val_building_f1") is not None else None))
    rates = [r["img_per_s"] for r in records if r.get("img_per_s")]
    if rates:
        out["train_img_per_s"] = round(sum(rates) / len(rates), 2)
    if records and records[-1].get("elapsed") is not None:
        out["trainer_elapsed_s"] = round(float(records[-1]["elapsed"]), 1)
    return out


# --------------------------------------------------------------------------------------------- machine


def hardware(train_device: str | None) -> dict:
    """The machine, as bench/run_all.py records it, plus a one-line description of what trained the model."""
    from bench.run_all import machine_info

    m = machine_info()
    gpu = m.get("gpu") if m.get("gpu") not in (None, "none") else None
    on_gpu = bool(train_device) and str(train_device).lower() not in ("cpu", "mps")
    cores = m.get("cores_usable", m.get("cores"))
    cpu = f"{m.get('cpu')}, {cores} cores"
    m["summary"] = (f"{train_device} (GPU), host CPU {cpu}" if on_gpu else
                    f"CPU: {cpu}" + (f" (GPU {gpu} not used)" if gpu else ", no GPU"))
    return m


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------------- report


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return list(data.get("rows", []))


def _wall(s: float | None) -> str:
    if s is None:
        return "–"
    s = float(s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def row_notes(row: dict) -> list[str]:
    notes = []
    if row.get("data_root") in ("", "demo"):
        notes.append("synthetic demo AOI")
    if str(row.get("init", "")).startswith("random"):
        notes.append("random init")
    if row.get("tiles", {}).get("val", 0) < 50:
        notes.append(f"{row.get('tiles', {}).get('val')} val tiles: smoke check, not an accuracy claim")
    cores = row.get("hardware", {}).get("cores_usable") or row.get("hardware", {}).get("cores") or 0
    peak = max((row.get("load_avg_start") or [0])[0], (row.get("load_avg_end") or [0])[0])
    if cores and peak > cores + 0.5:  # the run itself keeps about `cores` busy
        notes.append(f"shared machine (load average up to {peak:g} on {cores} cores, this run included): "
                     "wall time inflated by other work")
    if row.get("note"):
        notes.append(row["note"])
    return notes


def pending_recipes(rows: list[dict]) -> list[str]:
    """configs/ recipes without a row on a GPU and on their own data (the rows the report still owes)."""
    from bdcore.engine.config import RunConfig

    out = []
    for path in sorted((ROOT / "configs").glob("*.y*ml")):
        rel = str(path.relative_to(ROOT))
        try:
            own_root = RunConfig.load(path).data_root
        except ValueError:
            continue
        done = [r for r in rows if r.get("config") == rel and str(r.get("train_device", "cpu")).lower() != "cpu"
                and Path(str(r.get("data_root", ""))).name == Path(own_root).name]
        if not done:
            out.append(rel)
    return out


def caveat(rows: list[dict]) -> list[str]:
    lines = [
        "## How to read these numbers",
        "",
        "Each row is one training run followed by one scoring of its `best.pt` (the epoch with the best val pixel "
        "IoU) on the run's own val tiles: **pixel IoU** of the footprint mask at the config's threshold (TP/FP/FN "
        "summed over the val tiles) and the **SpaceNet building F1** (predicted polygons matched one-to-one to the "
        "truth polygons at IoU >= 0.5, the SpaceNet 2 metric, counts summed over the val tiles). Wall time runs from "
        "launching the trainer to its exit (process start, catalog, band statistics, array cache, training and "
        "per-epoch validation); scoring time is in the details below.",
        "",
    ]
    smoke = [r for r in rows if any("smoke check" in n for n in row_notes(r))]
    if smoke:
        lines += [
            f"Rows whose notes say *smoke check* ({len(smoke)} of {len(rows)}) are not accuracy claims. They ran on a "
            "CPU without internet, so the encoder started from **random weights** (no cached ImageNet weights), at "
            "reduced size (ResNet-18, 256² crops, a few hundred crops in all) on tiny data sets (24 synthetic tiles; "
            "10 real Las Vegas tiles) with a handful of val tiles. They show that a recipe file, the trainer, the "
            "checkpoint, the evaluator and the SpaceNet scorer work end to end on real SpaceNet files. With 2-5 val "
            "tiles one tile more or less right moves the figures by many points, and a model that saw a few hundred "
            "crops from random init is far from converged: they say nothing about Paris.",
            "",
        ]
    pending = pending_recipes(rows)
    if pending:
        lines += [
            "Not measured yet (no GPU was available where this report was written): "
            + ", ".join(f"`{p}`" for p in pending) + " on the full SpaceNet 2 Paris AOI (1,148 tiles; blocked split "
            "827 train / 233 val / 88 buffer), one GPU, ImageNet weights. On a GPU machine with the AOI downloaded:",
            "",
            "```bash",
            *[f"python -m bench.accuracy --config {p} --data-root ~/data/spacenet/AOI_3_Paris_Train" for p in pending],
            "```",
            "",
            "Each adds a row with the GPU name and the measured time (the configs estimate 5-10 min of training "
            "on an H100). Those are the rows to compare with the seed's 63 % pixel IoU on Paris, published "
            "U-Net/DeepLabV3+ Paris figures of 0.63-0.73 IoU and the SpaceNet 2 winner's 4-city F1 of 0.688 (official "
            "test set; ours is a spatially blocked split of the public train tiles, so the comparison is "
            "indicative).",
            "",
        ]
    return lines


def render_markdown(rows: list[dict], json_name: str = "accuracy.json") -> str:
    lines = [
        "# bdcore accuracy",
        "",
        f"Measured by `python -m bench.accuracy` (bench/accuracy.py); raw figures in `{json_name}`, one row per "
        "measurement, newest last. Recipes: `configs/` (see the README's *Paris recipe*).",
        "",
        "| date | config | AOI | tiles train/val | epochs (steps) | init | pixel IoU | SpaceNet F1 | wall time | "
        "hardware | torch | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r.get("tiles", {})
        cfg = f"`{r.get('config') or '(defaults)'}`"
        shown = {k: v for k, v in sorted(r.get("overrides", {}).items()) if k not in ("data_root", "device")}
        if shown:  # data_root and device are in the AOI and hardware columns
            cfg += " + " + ", ".join(f"{k}={v}" for k, v in shown.items())
        hw = r.get("hardware", {})
        lines.append(
            f"| {str(r.get('date', ''))[:10]} | {cfg} | {r.get('aoi', '?')} | {t.get('train', '?')}/{t.get('val', '?')} | "
            f"{r.get('epochs_done', '?')} ({r.get('steps', '?')}) | {r.get('init', '?')} | "
            f"**{_pct(r.get('pixel_iou'))}** | **{_pct(r.get('building_f1'))}** | {_wall(r.get('wall_s'))} | "
            f"{hw.get('summary', '?')} | {hw.get('torch', '?')} | {'; '.join(row_notes(r)) or '–'} |")
    if not rows:
        lines.append("| – | no measurement yet | | | | | | | | | | |")
    lines += ["", *caveat(rows), "## Rows in detail", ""]
    for i, r in enumerate(rows, 1):
        m = r.get("model", {})
        lines += [
            f"{i}. `{r.get('command', '')}`  ",
            f"   run `{r.get('run_id')}`; data `{r.get('data_root')}` ({r.get('tiles', {}).get('labelled')} labelled "
            f"tiles, {r.get('split')} split: {r.get('tiles', {}).get('train')} train, {r.get('tiles', {}).get('val')} "
            f"val, {r.get('tiles', {}).get('buffer')} buffer); {m.get('arch')}/{m.get('encoder')}, {m.get('product')}, "
            f"crop {m.get('crop_size')}, batch {m.get('batch_size')}, lr {m.get('lr')}, boundary {m.get('boundary')}.  ",
            f"   pixel IoU {r.get('pixel_iou')} (P {r.get('pixel_precision')}, R {r.get('pixel_recall')}); SpaceNet "
            f"F1 {r.get('building_f1')} (P {r.get('building_precision')}, R {r.get('building_recall')}; TP "
            f"{r.get('tp')}, FP {r.get('fp')}, FN {r.get('fn')}); trainer's best val IoU "
            f"{r.get('trainer_best_val_iou')} at epoch {r.get('best_epoch')}; {r.get('train_img_per_s')} img/s; "
            f"trainer {_wall(r.get('wall_s'))} wall"
            + (f" ({_wall(r['train_cpu_s'])} CPU)" if r.get("train_cpu_s") is not None else "")
            + f", scoring {_wall(r.get('eval_s'))}; trained on {r.get('train_device')}; load average "
            f"{r.get('load_avg_start', '?')} → {r.get('load_avg_end', '?')}"
            + (f" ({r['load_avg_source']})" if r.get("load_avg_source") else "") + "; bdcore "
            f"{r.get('hardware', {}).get('git_commit', '?')}"
            f"{' + local changes' if r.get('hardware', {}).get('git_dirty') else ''}.",
        ]
    lines.append("")
    return "\n".join(lines)


def write_report(rows: list[dict], out_md: Path) -> None:
    from bdcore.atomic import atomic_write_bytes, atomic_write_json

    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_json = out_md.with_suffix(".json")
    atomic_write_json(out_json, {"rows": rows})
    atomic_write_bytes(out_md, render_markdown(rows, out_json.name).encode())


# --------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from bdcore.engine.config import RunConfig

    p = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="RunConfig YAML/JSON (e.g. configs/paris-psrgb-unet-r34.yaml)")
    p.add_argument("--run", help="score and record an existing run (id or folder) instead of training one")
    p.add_argument("--name", help="run id (default: timestamp + arch/encoder)")
    p.add_argument("--which", choices=("best", "last"), default="best", help="checkpoint to score")
    p.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds (no row)")
    p.add_argument("--note", default="", help="free text for the row's notes column")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="report .md (its .json sidecar beside it)")
    p.add_argument("--no-record", action="store_true", help="print the JSON row only; leave docs/ alone")
    p.add_argument("--render-only", action="store_true", help="re-render the .md from the .json and exit")
    fields = p.add_argument_group("RunConfig fields (override the config file)")
    for name in RunConfig.model_fields:
        fields.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", default=argparse.SUPPRESS,
                            metavar=name.upper())
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    out_md: Path = args.out
    if args.render_only:
        write_report(load_rows(out_md.with_suffix(".json")), out_md)
        print(out_md)
        return {}
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    from bdcore.inference.evaluate import evaluate_checkpoint, run_config

    if args.run:
        if args.config or overrides:
            raise SystemExit("--run scores an existing run as it was trained: give no --config or field flags")
        from bdcore.engine.runs import run_path

        run_dir, wall, cpu = run_path(args.run), None, None
        cfg = run_config(run_dir)
    else:
        cfg = config_from_args(args.config, overrides)
        run_dir = None
    counts = split_counts(cfg)  # before training: a bad data_root fails here, not in the detached trainer
    load_start = _load()
    if run_dir is None:
        run_dir, wall, cpu = train_run(cfg, args.name, args.timeout)
    load_end = _load()
    init = encoder_init(run_dir)
    trained = run_summary(run_dir)
    if wall is None:
        wall = trained.get("trainer_elapsed_s")

    print(f"[accuracy] scoring {args.which}.pt of {run_dir.name} on {counts['val']} val tiles", file=sys.stderr,
          flush=True)
    t0 = time.perf_counter()
    _, s = evaluate_checkpoint(run_dir, which=args.which, tiles="val", device=cfg.device)
    eval_s = time.perf_counter() - t0

    config_label = None
    if args.config:
        try:
            config_label = str(Path(args.config).resolve().relative_to(ROOT))
        except ValueError:
            config_label = str(args.config)
    elif args.run:
        config_label = f"run {run_dir.name}"
    cmd_args = argv if argv is not None else sys.argv[1:]
    hw = hardware(trained.get("device"))
    r4 = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
    row = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m bench.accuracy" + "".join(f" {shlex.quote(str(a))}" for a in cmd_args),
        "config": config_label, "overrides": overrides, "run_id": run_dir.name, "data_root": cfg.data_root,
        "aoi": ("demo (synthetic, " + counts["aoi"] + ")") if cfg.data_root.strip() in ("", "demo") else counts["aoi"],
        "split": cfg.split, "tiles": {k: counts[k] for k in ("labelled", "train", "val", "buffer")},
        "model": {k: getattr(cfg, k) for k in ("arch", "encoder", "product", "crop_size", "batch_size", "lr",
                                                 "epochs", "boundary", "amp", "encoder_weights")},
        "init": init, "which": args.which, "threshold": s["threshold"],
        "pixel_iou": r4(s["pixel_iou"]), "pixel_precision": r4(s["pixel_precision"]),
        "pixel_recall": r4(s["pixel_recall"]),
        "building_f1": r4(s["F1Score"]), "building_precision": r4(s["Precision"]), "building_recall": r4(s["Recall"]),
        "tp": s["TruePos"], "fp": s["FalsePos"], "fn": s["FalseNeg"], "val_tiles_scored": s["n_tiles"],
        **{k: v for k, v in trained.items() if k not in ("device", "state")},
        "train_device": trained.get("device"),
        "wall_s": None if wall is None else round(float(wall), 1), "eval_s": round(eval_s, 1),
        "train_cpu_s": None if cpu is None else round(float(cpu), 1),
        "load_avg_start": load_start, "load_avg_end": load_end,
        "hardware": hw, "note": args.note,
    }
    if not args.no_record:
        rows = load_rows(out_md.with_suffix(".json"))
        rows.append(row)
        write_report(rows, out_md)
        print(f"[accuracy] recorded in {out_md} ({len(rows)} rows)", file=sys.stderr, flush=True)
    print(json.dumps(row, indent=2, default=str))
    return row


if __name__ == "__main__":
    main()
