"""Run every benchmark, each in its own subprocess (isolated memory), and write the performance report.

    python -m bench                      # full report -> docs/performance.md + docs/performance.json (~10 min on 2 cores)
    python -m bench --quick              # smaller sizes, ~2-3 min; writes docs/performance-quick.{md,json}
    python -m bench --device cuda        # on a GPU machine: train/inference on the GPU at GPU-sized settings
    python -m bench --only data,scoring  # a subset (the report lists the others as not run)

Every figure is measured in this one run, on this machine; ratios compare two paths timed back to back in the
same subprocess. The report records the machine, the load average before/after each benchmark (other processes
on a shared machine slow every absolute figure), and each benchmark's command line, so a reader can rerun one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (script, full args, quick args, timeout s). GPU settings are added in bench_args().
BENCHES: dict[str, tuple[str, list[str], list[str], int]] = {
    "data": ("data.py", ["--demo-tiles", "200", "--epoch-tiles", "1148", "--workers", "2", "--min-seconds", "3"],
             ["--demo-tiles", "24", "--epoch-tiles", "200", "--workers", "2", "--min-seconds", "1"], 420),
    # CPU: in-process loading (workers 0). On 2 cores, loader worker processes take CPU from the model itself
    # (measured 91.8-94.4 % with 2 workers vs 99 % with 0); on CUDA bench_args adds min(8, cores) workers.
    "train": ("train.py", ["--steps", "12", "--warmup", "3", "--workers", "0"],
              ["--steps", "4", "--warmup", "1", "--batch", "4", "--crop", "96", "--encoder", "resnet18"], 300),
    "inference": ("inference.py", ["--tiles", "8", "--big"], ["--tiles", "2", "--size", "2000"], 420),
    # --solaris: solaris's scorer takes 12-90 s on 10,000 buildings; --overlap 4000: ~35 s (118 s in all, loaded).
    "scoring": ("scoring.py", ["--images", "100", "--buildings", "100", "--solaris", "--overlap", "4000"],
                ["--images", "10", "--buildings", "100", "--solaris", "--solaris-images", "25", "--overlap", "500"],
                900),
    "map_render": ("map_render.py", ["--repeat", "3"], ["--repeat", "1"], 180),
    "app_start": ("app_start.py", [], [], 300),
    "onnx": ("export_onnx.py", ["--tiles", "10"], ["--tiles", "2", "--encoder", "resnet18"], 420),
    "outlines": ("outlines.py", [], ["--demo-tiles", "4"], 300),
}
CHROMIUM = Path("/usr/bin/chromium")


def bench_args(name: str, quick: bool, device: str) -> list[str]:
    _, full, small, _ = BENCHES[name]
    args = list(small if quick else full)
    if device != "auto" and name in ("train", "inference"):
        args += ["--device", device]
    if device.startswith("cuda") and not quick:
        if name == "train":
            # steady state: 200 timed steps after the start-up batches; workers: the trainer's auto value (cores)
            args += ["--batch", "16", "--crop", "512", "--steps", "200"]
            args = [a for i, a in enumerate(args) if a != "--workers" and (i == 0 or args[i - 1] != "--workers")]
        if name == "inference":
            args = ["--tiles", "64", "--big", "--batch-size", "8", "--device", device, "--bf16", "--channels-last"]
    return args


# --------------------------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                if ln.startswith("model name")), platform.processor() or platform.machine())
    mem_kb = next((int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal:")), 0)
    info = {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(mem_kb / 2**20, 1), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        info["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    code = ("import json, numpy, torch; c = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
            "'numpy': numpy.__version__, 'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0) if c else 'none', "
            "'gpu_count': torch.cuda.device_count() if c else 0, 'torch_threads': torch.get_num_threads()}))")
    try:  # in a subprocess: importing torch here would inflate every benchmark's parent memory
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        info.update(json.loads(out.stdout.strip().splitlines()[-1]))
    except Exception as exc:  # noqa: BLE001 - the report still gets written
        info["torch_error"] = repr(exc)
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bdcore", "bench"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_dirty"] = bool(dirty)
    except Exception:  # noqa: BLE001
        pass
    return info


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------------- running


def last_json(text: str) -> dict | None:
    """The last JSON object printed on stdout (the scripts print one; logging may precede it)."""
    dec = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")]
    for i in reversed(starts):
        try:
            obj, _ = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def run_bench(name: str, quick: bool, device: str) -> dict:
    script, _, _, timeout = BENCHES[name]
    cmd = [sys.executable, str(ROOT / "bench" / script), *bench_args(name, quick, device)]
    rec: dict = {"command": "python " + " ".join(shlex.quote(c) for c in [f"bench/{script}", *cmd[2:]]),
                 "load_avg_start": _load()}
    if name in ("map_render", "app_start") and not CHROMIUM.exists():
        rec.update(status="skipped", reason=f"{CHROMIUM} not found (apt-get install chromium)")
        return rec
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        rec.update(status="timeout", wall_s=round(time.perf_counter() - t0, 1),
                   stderr_tail=(exc.stderr or b"")[-1500:].decode("utf-8", "replace") if isinstance(exc.stderr, bytes)
                   else str(exc.stderr or "")[-1500:])
        return rec
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec["load_avg_end"] = _load()
    result = last_json(proc.stdout)
    if proc.returncode != 0 or result is None:
        rec.update(status="failed", returncode=proc.returncode, stderr_tail=proc.stderr[-1500:])
        return rec
    rec.update(status="ok", result=result)
    return rec


# --------------------------------------------------------------------------------------------- report


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        v = f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{v}{unit}"


def _met(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "**no**")


def buildings_rows(r: dict | None) -> list[tuple[str, str, str, str]]:
    """The 'Show every building' rows of map_render (synthetic AOI: outlines, and the density fallback)."""
    if not r:
        return []
    how = ("outlines" if r["mode"] == "outlines"
           else f"density grid ({r['features_drawn']:,} cells; budget {r['max_drawn']:,})")
    return [(f"Explore map, every building: {r['buildings']:,} synthetic buildings on {r['tiles']:,} tiles drawn as "
             f"{how}: "
             "server (cached buildings → HTML) / browser until the canvas has drawn them",
             f"**{r['server_s']} s** / **{r['browser_s']} s** (first read of the labels {r['cold_s']} s)",
             "< 1 s / < 2 s", _met(r["server_s"] < 1.0 and r["browser_s"] < 2.0))]


def summary_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(figure, value, goal, met) for the headline table."""
    rows = []
    b = report["benchmarks"]

    def res(name):
        r = b.get(name, {})
        return r.get("result") if r.get("status") == "ok" else None

    d = res("data")
    if d:
        for s in d.get("sets", []):
            rows.append((f"data pipeline, {s['set']} ({s['tiles']} tiles {'x'.join(map(str, s['shape']))}): "
                         f"cached vs raw GeoTIFF, whole-tile item",
                         f"{s['cached_tiles_per_s']:,} vs {s['raw_tiles_per_s']:,} tiles/s = **{s['speedup_wall']}x** "
                         f"(CPU {s['speedup_cpu']}x)", ">= 10x", _met(s["speedup_wall"] >= 10)))
        c = d.get("crops")
        if c:
            rows.append((f"one loader worker, random {c['crop']}² training crops + augmentation: uint16 crops "
                         "(normalise + jitter on the device) vs float32 crops made in the worker",
                         f"**{c['raw_crops_per_s']:,}** vs {c['cpu_crops_per_s']:,} crops/s (CPU "
                         f"{c['raw_cpu_ms_per_crop']} vs {c['cpu_cpu_ms_per_crop']} ms/crop)", ">= 250 crops/s",
                         _met(c["raw_crops_per_s"] >= 250)))
        e = d.get("epoch", {})
        if e:
            key = max((k for k in e if k.startswith("train_crop256_aug_workers") and k.endswith("_s")),
                      key=lambda k: int(k.split("workers")[1].split("_")[0]), default=None)
            for k, label in ((key, "training epoch (random 256² crops + augmentation, DataLoader)"),
                             ("val_full_tile_workers0_s", "validation epoch (whole 650² tiles, 1 process)"),
                             ("train_full_tile_aug_workers0_s", "whole-tile augmented epoch (1 process)")):
                if k and k in e:
                    who = f", {k.split('workers')[1].split('_')[0]} workers" if "crop256" in k else ""
                    rows.append((f"{label}{who}: {e['tiles']} Paris-sized tiles from the cache", f"**{e[k]} s**",
                                 "< 20 s", _met(e[k] < 20)))
    t = res("train")
    if t:
        rows.append((f"training img/s, full pipeline vs model only ({t['arch']}/{t['encoder']}, batch {t['batch']}, "
                     f"crop {t['crop']}, {t['device_name']})",
                     f"{t['pipeline_img_s']} vs {t['model_only_img_s']} img/s = **{100 * t['pipeline_vs_model']:.1f} %**",
                     ">= 95 %", _met(t["pipeline_vs_model"] >= 0.95)))
    i = res("inference")
    if i and "speed" in i:
        s = i["speed"]
        rows.append((f"inference, 650x650 tiles ({s['model']}, {i['device']}, TTA {'on' if s['tta'] else 'off'})",
                     f"**{s['array_tiles_per_s']} tiles/s** in memory; {s['geotiff_tiles_per_s']} tiles/s GeoTIFF "
                     "in → GeoTIFF/GeoJSON/CSV out", "–", "–"))
    if i and "memory" in i:
        m = i["memory"]
        if "error" in m:
            rows.append(("inference peak memory", "failed (see JSON)", "–", "–"))
        else:
            rows.append((f"inference peak memory, {m['image']} GeoTIFF (window {m['window']}, model {m['model']})",
                         f"**+{m['peak_rss_growth_mb']:,} MB** RSS (peak {m['peak_rss_mb']:,} MB) vs "
                         f"{m['image_float32_mb']:,} MB for the image as float32; {m['seconds']} s",
                         "bounded (< image as float32; judged at 10,000²)",
                         _met(m["peak_rss_growth_mb"] < m["image_float32_mb"]) if m["image_float32_mb"] > 1000 else "–"))
    o = res("onnx")
    if o:
        s, e = o["speed"], o["export"]
        rows.append((f"ONNX export ({o['model']}), then onnxruntime vs torch on {s['tiles']} Vegas {s['tile']} tiles "
                     f"(CPU, the same Predictor windows and blending)",
                     f"export **{e['seconds']} s** ({e['onnx_mb']} MB); {s['onnxruntime_ms_per_tile']} vs "
                     f"{s['torch_ms_per_tile']} ms/tile = **{s['onnxruntime_speedup']}x**; "
                     f"max |Δp| {s['max_abs_prob_diff']:.1e}", "|Δp| < 1e-4", _met(s["max_abs_prob_diff"] < 1e-4)))
    s = res("scoring")
    if s:
        rows.append((f"SpaceNet scorer vs naive per-pair scorer, {s['truth_buildings']:,} buildings / "
                     f"{s['proposals']:,} proposals", f"{s['bdcore_score_s']} s vs {s['naive_per_pair_s']} s = "
                     f"**{s['speedup']}x** (same TP/FP/FN)", "–", "–"))
        rows += scoring_rows(s)
    mr = b.get("map_render", {})
    if mr.get("status") == "ok":
        r = mr["result"]
        tot = round(r["build_s"] + r["browser_s"], 3)
        rows.append((f"Explore map, {r['tiles']:,} tile footprints: server build + browser until all polygons are "
                     "in the DOM", f"{r['build_s']} + {r['browser_s']} = **{tot} s**", "< 2 s", _met(tot < 2.0)))
        for key in ("buildings", "fallback"):
            rows += buildings_rows(r.get(key))
    elif mr.get("status") == "skipped":
        rows.append(("Explore map render", f"skipped: {mr['reason']}", "< 2 s", "–"))
    st = b.get("app_start", {})
    if st.get("status") == "ok":
        r = st["result"]
        for mode, what in (("prepared", "after the README set-up command (demo written by `bdcore demo`, "
                                        f"{r['prepared'].get('demo_write_s')} s)"),
                           ("in_app", "demo written by the first page (progress bar shown: "
                                      f"{r['in_app'].get('progress_seen')})")):
            v = r[mode]["first_map_s"]
            rows.append((f"App fresh start, first request → first map drawn, {what}", f"**{v} s**", "< 5 s",
                         _met(v < 5.0) if mode == "prepared" else "–"))
    o = res("outlines")
    if o:
        f1, best = o["mean_f1"], o["best"]
        what = "model-like truth maps" + (", and a tiny trained model on Vegas" if o.get("train_steps") else "")
        rows.append((f"building outlines none / simplify / orthogonal: SpaceNet F1, mean over Vegas sample and demo "
                     f"({what})", " / ".join(f"{f1[k]:.4f}" for k in ("none", "simplify", "orthogonal"))
                     + f"; best **{best}** (the default)", "default = best", _met(o.get("default") == best)))
    for name, r in b.items():
        if r.get("status") in ("failed", "timeout"):
            rows.append((f"{name} benchmark", f"**{r['status']}** (see performance JSON)", "–", "–"))
    return rows


def scoring_rows(s: dict) -> list[tuple[str, str, str, str]]:
    """Summary rows of the scoring benchmark's --solaris and --overlap parts."""
    rows = []
    sol = s.get("solaris")
    if sol and "skipped" in sol:
        rows.append(("SpaceNet scorer vs solaris", f"skipped: {sol['skipped']}", ">= 100x", "–"))
    elif sol:
        what = (f"SpaceNet scorer vs solaris's, end to end (both CSVs read, then scored), "
                f"{sol['truth_buildings']:,} buildings / {sol['proposals']:,} proposals over {sol['images']} images "
                f"(turned by up to {sol.get('tilt_deg', 0):g}°)")
        cpu = f", CPU {sol['speedup_cpu']}x" if "speedup_cpu" in sol else ""
        value = (f"{sol['bdcore_s']} s (CSV reading {sol['bdcore_csv_read_s']} s) vs {sol['solaris_s']} s = "
                 f"**{sol['speedup']}x**{cpu} (same TP/FP/FN per image)")
        rows.append((what, value, ">= 100x", _met(sol["speedup"] >= 100)))
    for key, what in (("overlap_near_identical", "near-identical"), ("overlap_duplicates", "identical"),
                      ("overlap_near_identical_turned", "near-identical turned (10°: no rectangle shortcut)")):
        o = s.get(key)
        if o and "error" not in o:
            case = (f"SpaceNet scorer, {o['polygons_each']:,} {what} truth and proposal polygons stacked in one "
                    f"image ({o['pairs']:,} overlapping pairs, {o['csv_kb_each']} KB CSVs), fresh process")
            value = f"**{o['seconds']} s, peak RSS {o['peak_rss_mb']:,} MB** (TP {o['tp']}, FP {o['fp']}, FN {o['fn']})"
            rows.append((case, value, "< 2 GB", _met(o["peak_rss_mb"] < 2048)))
        elif o:
            rows.append((f"SpaceNet scorer, {what} stacked polygons", "**failed** (see JSON)", "< 2 GB", "–"))
    return rows


def details(report: dict) -> list[str]:
    out = []
    b = report["benchmarks"]
    d = b.get("data", {}).get("result")
    if d:
        out += ["### Data pipeline", "",
                "| set | raw tiles/s | cached tiles/s | ratio (wall) | ratio (CPU) | raw CPU ms/tile | cached CPU ms/tile "
                "| decode-only ratio |", "|---|---|---|---|---|---|---|---|"]
        for s in d["sets"]:
            out.append(f"| {s['set']} | {s['raw_tiles_per_s']} | {s['cached_tiles_per_s']} | {s['speedup_wall']}x | "
                       f"{s['speedup_cpu']}x | {s['raw_cpu_ms_per_tile']} | {s['cached_cpu_ms_per_tile']} | "
                       f"{s['decode_only_speedup_wall']}x |")
        e = d.get("epoch", {})
        if e:
            out += ["", f"Epoch over {e['tiles']} Paris-sized tiles from the cache (entries as {e.get('entries')}): "
                    + ", ".join(f"`{k}` {v}" for k, v in e.items() if k not in ("tiles", "entries")) + "."]
        out.append("")
    t = b.get("train", {}).get("result")
    if t:
        out += ["### Training", "", f"model only {t['model_only_img_s']} img/s, full pipeline {t['pipeline_img_s']} "
                f"img/s, data loader alone {t['data_only_img_s']} img/s ({t['workers']} workers, "
                f"{t['torch_threads']} torch threads, bf16 {t['bf16']}, channels_last {t['channels_last']}); the "
                f"loader alone is {t['data_only_img_s'] / t['model_only_img_s']:.0f}x faster than the model.", ""]
    i = b.get("inference", {}).get("result")
    if i:
        out += ["### Inference", "", "```json", json.dumps(i, indent=1), "```", ""]
    s = b.get("scoring", {}).get("result")
    if s:
        out += ["### Scoring and polygonisation", "", "mask_to_polygons on a 1280² map with "
                f"{s.get('polygonize_buildings')} buildings: plain {s.get('polygonize_none_s')} s "
                f"(F1 {s.get('polygonize_none_f1')}), boundary channel {s.get('polygonize_boundary_s')} s "
                f"(F1 {s.get('polygonize_boundary_f1')}), watershed {s.get('polygonize_watershed_s')} s "
                f"(F1 {s.get('polygonize_watershed_f1')}).", ""]
    o = b.get("outlines", {}).get("result")
    if o:
        out += ["### Building outlines", "",
                f"`mask_to_polygons(outline=...)` on truth masks made model-like (blur σ {o['sigma']} px + smooth "
                f"noise {o['noise']}) and on the clean rasterised truth, scored against the label polygons. Best "
                f"mean SpaceNet F1 (all rows but clean): **{o['best']}**; the default is "
                f"**{o.get('default')}**. SpaceNet matching counts a building at IoU >= 0.5, so the outline moves F1 "
                "by a building or two; the mean IoU of the matches, the vertices and the time show the rest"
                + (f" (measured {o['date']})." if o.get("date") else "."), "",
                "| set | condition | outline | SpaceNet F1 | TP / FP / FN | mean IoU of matches | vertices per building "
                "| ms per tile |", "|---|---|---|---|---|---|---|---|"]
        for r in o["results"]:
            out.append(f"| {r['set']} | {r['condition']} | {r['outline']} | {r['f1']:.4f} | {r['tp']} / {r['fp']} / "
                       f"{r['fn']} | {r['mean_iou']:.4f} | {r['vertices_per_building']} | {r['ms_per_tile']} |")
        out.append("")
    return out


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# bdcore performance report",
        "",
        f"Generated by `{report['command']}` on {report['date']} in {report['total_s']} s"
        f"{' (quick mode: reduced sizes)' if report['quick'] else ''}. Raw figures: `{report['json_name']}`.",
        "",
        "## Machine",
        "",
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores ({m.get('cores_usable', m.get('cores'))} usable), "
        f"RAM {m.get('ram_gb')} GB",
        f"- GPU: {m.get('gpu', 'unknown')}" + (f" (CUDA {m.get('cuda')})" if m.get("gpu") not in (None, "none") else ""),
        f"- torch {m.get('torch')}, numpy {m.get('numpy')}, Python {m.get('python')}, {m.get('platform')}",
        f"- bdcore commit {m.get('git_commit', '?')}{' + local changes' if m.get('git_dirty') else ''}",
        f"- load average (1/5/15 min) at start {report['load_avg_start']}, at end {report['load_avg_end']} "
        f"on {m.get('cores')} cores; per benchmark below. A load above the core count means other processes "
        "were competing: absolute figures are then pessimistic, ratios less affected (both sides share the load).",
        "",
        "## Summary",
        "",
        "| figure | measured | goal | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(report)]
    lines += ["", "## Details", ""]
    lines += details(report)
    lines += ["## Benchmarks run", "", "| benchmark | status | wall s | load avg start → end | command |",
              "|---|---|---|---|---|"]
    for name, r in report["benchmarks"].items():
        rerun = r.get("rerun")  # a benchmark rerun later and merged into this report
        status = r.get("status") + (f" (rerun {rerun['date']}, commit {rerun['commit']})" if rerun else "")
        lines.append(f"| {name} | {status} | {_fmt(r.get('wall_s'))} | {r.get('load_avg_start')} → "
                     f"{r.get('load_avg_end', '–')} | `{r.get('command')}` |")
    lines += [""]
    if m.get("gpu", "none") == "none":
        lines += ["## On a GPU machine", "",
                  "This report ran without a GPU (none is lent to this machine), so training and inference figures "
                  "are CPU figures at small CPU sizes. On a CUDA machine run:", "",
                  "```bash", ".venv/bin/python -m bench --device cuda", "```", "",
                  "which trains at batch 16, crop 512, bf16 autocast, channels_last, the trainer's auto loader workers "
                  "(the cores, at most 16), 200 timed steps after the start-up batches, and infers 64 tiles; or "
                  "single benchmarks, e.g. `python bench/train.py --device cuda --batch 16 --crop 512 --bf16 "
                  "--channels-last`.", ""]
    lines += ["## How these are measured", "",
              "- **data**: `SpaceNetSegmentation.__getitem__` on whole tiles, `cache=False` (GeoTIFF decode + label "
              "rasterisation each time) vs the array cache (row reads of the `.npy` entry + normalisation); both give "
              "bit-identical items (asserted). The epoch replicates the demo tiles' cache entries under 1,148 names "
              "and fails if any GeoTIFF is decoded.",
              "- **train**: `bdcore.engine.recipe.train_step` on one batch already on the device (model only) vs the trainer's "
              "DataLoader feeding the same step (full pipeline), same number of steps. On a CPU-only machine the "
              "data is loaded in-process (`--workers 0`): loader worker processes would share the same 2 cores as the "
              "model (91.8-94.4 % of model-only measured with 2 workers), while in-process loading costs only the "
              "data-loading share of CPU time; on CUDA the benchmark uses min(8, cores) workers. "
              "Denormal floats are flushed to zero for both figures (see `bench/train.py --help`).",
              "- **inference**: `Predictor.predict_array` on random 650×650×3 uint16 tiles (random-init weights), "
              "and `predict_geotiff` end to end; memory: peak RSS growth of one `predict_geotiff` call in a fresh "
              "process on a 10,000² GeoTIFF (a cheap stand-in network, so the figure is the pipeline's own memory).",
              "- **scoring**: `score_spacenet` vs a per-pair loop over shapely polygons on synthetic images of 100 "
              "buildings each; both must agree on TP/FP/FN per image. Against solaris: synthetic SpaceNet CSVs "
              "(250 images x 40 buildings turned by up to 30°, proposals jittered, dropped and false alarms added; "
              "turned, so that no pair is two axis-aligned rectangles, which bdcore scores without an overlay) "
              "scored end to end "
              "by `read_spacenet_csv` x 2 + `score_spacenet` in the benchmark's process (best of 3) and by solaris's "
              "`spacenet_buildings_2` (`../shared/bench/solaris_eval`, in a subprocess, its own timing of the call, "
              "which reads the CSVs; one run); both must agree on TP/FP/FN per image. Stacked polygons: N copies "
              "(exact, or jittered < 1 px, or jittered and turned by 10°) of one 40 px square as truth and as "
              "proposals in one image, scored from the CSVs in a fresh process; peak RSS is its VmHWM.",
              "- **map_render**: `viz.tile_map` of the real Paris tile index → HTML, then Debian chromium (headless, "
              "Leaflet served locally) until every footprint `path` is in the DOM; best of N. Then every building of a "
              "SYNTHETIC AOI on those tiles (rectangles written as labels files, no imagery): 25,000 drawn as canvas "
              "outlines and 150,000 (Vegas-like) as the density-grid fallback; server = `labels.aoi_buildings` "
              "(cached) + `maps.buildings_layer` + HTML, browser = until `window.__bdcoreDrawn` is set.",
              "- **app_start**: `streamlit run app.py` on an empty cache and runs folder, Debian chromium opens `/`, "
              "time until the first footprint `path` is in the map's iframe; once after `python -m bdcore demo` (the "
              "README set-up command) and once with the first page writing the demo itself.",
              "- **outlines**: each labelled tile's footprint and boundary band (`labels.tile_mask(boundary=True)`) "
              "blurred and given smooth noise to imitate a model's probability map (no trained model: the same "
              "input for every choice), polygonised with each outline choice, SpaceNet-matched with the label "
              "polygons; time = `mask_to_polygons` per tile. `--train-steps N` adds the output of a tiny U-Net/resnet18 "
              "trained N steps on the Vegas tiles (not in the default run: minutes of CPU training).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    ap.add_argument("--device", default="auto", help="device for train/inference benchmarks (auto, cpu, cuda)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--render-only", type=Path, default=None, metavar="JSON",
                    help="re-render the markdown from a saved performance JSON without running anything")
    ap.add_argument("--out", type=Path, default=None,
                    help="output .md path (default docs/performance.md, docs/performance-quick.md with --quick)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    out_md = args.out or ROOT / "docs" / ("performance-quick.md" if args.quick else "performance.md")
    out_json = out_md.with_suffix(".json")
    if args.render_only:
        from bdcore.atomic import atomic_write_bytes

        atomic_write_bytes(out_md, render_markdown(json.loads(args.render_only.read_text())).encode())
        return 0

    t0 = time.perf_counter()
    report = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "quick": args.quick,
              "command": "python -m bench" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
              "load_avg_start": _load(), "machine": machine_info(), "benchmarks": {}, "json_name": out_json.name}
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        rec = run_bench(name, args.quick, args.device)
        report["benchmarks"][name] = rec
        print(f"[bench] {name}: {rec['status']} in {rec.get('wall_s', '-')} s", file=sys.stderr, flush=True)
    report["load_avg_end"] = _load()
    report["total_s"] = round(time.perf_counter() - t0, 1)

    from bdcore.atomic import atomic_write_bytes, atomic_write_json

    out_md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_json, report)
    md = render_markdown(report)
    atomic_write_bytes(out_md, md.encode())
    print(md)
    return 0 if all(r["status"] in ("ok", "skipped") for r in report["benchmarks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
