"""Training runs as detached processes: create, launch, list, stop, resume, delete.

A run is a folder ``runs_dir()/<run-id>/`` holding ``config.json``, ``status.json`` (written by the trainer),
``metrics.jsonl``, ``last.pt``/``best.pt`` and ``train.log``. This module owns ``launch.json`` (pid, command,
time) and ``.lock``.

One writer per run folder: :func:`launch` takes an exclusive ``flock`` on ``run_dir/.lock`` and hands the locked
file descriptor to the training process (``pass_fds``), so the lock is held exactly as long as the trainer lives
(a ``kill -9`` releases it too). A second launch of the same run finds the lock taken and is refused, and
"is it running?" is answered by probing the lock, which is immune to pid reuse.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bdcore.atomic import atomic_write_json
from bdcore.paths import runs_dir
from bdcore.progress import format_eta

LOCK_NAME = ".lock"
LAUNCH_NAME = "launch.json"
FINAL_STATES = ("finished", "failed", "stopped")
ACTIVE_STATES = ("queued", "running")
TRAIN_MODULE = "bdcore.engine.train"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

# Popen objects of runs launched by this process, so finished children are reaped (no zombies in a long-lived app).
_CHILDREN: dict[int, subprocess.Popen] = {}


class RunError(ValueError):
    """A run cannot be created/launched/stopped/resumed/deleted as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------------------- paths


def validate_run_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise RunError(
            f"invalid run name {name!r}: use 1-80 letters, digits, '.', '_' or '-' (no '/', no '..', "
            "not starting with '.' or '-')"
        )
    return name


def run_path(run: str | os.PathLike) -> Path:
    """A run folder from a path or a run id (resolved under ``runs_dir()``); must exist."""
    p = Path(run)
    if not p.is_dir():
        if isinstance(run, str) and os.sep not in run:
            p = runs_dir() / validate_run_name(run)
        if not p.is_dir():
            raise RunError(f"no run {str(run)!r} in {runs_dir()}: list runs with `python -m bdcore runs`")
    if not (p / "config.json").is_file():
        raise RunError(f"{p} is not a run folder (no config.json): give a run id from `python -m bdcore runs` "
                       "or a folder made by `python -m bdcore train`")
    return p


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


# ------------------------------------------------------------------------------------------------------ reading


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else {}
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}


def read_status(run_dir: str | os.PathLike) -> dict:
    """``status.json`` as a dict ({} if missing/unreadable; writes are atomic so a partial file is not expected)."""
    return _read_json(Path(run_dir) / "status.json")


def read_config(run_dir: str | os.PathLike) -> dict:
    return _read_json(Path(run_dir) / "config.json")


def read_jsonl(path: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """Records of a metrics log; a partial or corrupt line (e.g. the one being written) is skipped."""
    out: list[dict] = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, OSError):
        return out
    for line in data.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and (kind is None or rec.get("kind") == kind):
            out.append(rec)
    return out


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """Records of the run's ``metrics.jsonl`` (optionally only ``kind`` = "step" or "epoch")."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl", kind)


# -------------------------------------------------------------------------------------------------- liveness


def _pid_alive(pid: Any) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _lock_held(run_dir: Path) -> bool:
    """True if some process holds the run's flock (i.e. its trainer is alive)."""
    path = run_dir / LOCK_NAME
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def is_alive(run_dir: str | os.PathLike) -> bool:
    """Is a trainer process working on this run right now (lock held, or the status/launch pid is alive)?"""
    run_dir = Path(run_dir)
    if _lock_held(run_dir):
        return True
    status = read_status(run_dir)
    launch = _read_json(run_dir / LAUNCH_NAME)
    # The lock covers processes started by launch(); a trainer started another way (torchrun, a notebook) is
    # only visible through its pid.
    if status.get("state") in ACTIVE_STATES and status.get("pid") and status.get("pid") != launch.get("pid"):
        return _pid_alive(status.get("pid"))
    return _pid_alive(launch.get("pid")) and launch.get("pid") in _CHILDREN


def effective_state(run_dir: str | os.PathLike, status: dict | None = None) -> str:
    """The state to show: status.json's, except an active state with no live process is ``interrupted``."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) if status is None else status
    state = status.get("state") or "unknown"
    if state in ACTIVE_STATES:
        if is_alive(run_dir):
            return state
        if state == "running" or status.get("pid"):
            return "interrupted"
        # launched, but the trainer died before it ever reported (bad environment, import error, ...)
        return "failed" if (run_dir / LAUNCH_NAME).exists() else "queued"
    return state


def log_tail(run_dir: str | os.PathLike, lines: int = 1) -> str:
    """Last non-empty lines of ``train.log`` (where a trainer that died early left its traceback)."""
    try:
        with open(Path(run_dir) / "train.log", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("=== ")]
    return "\n".join(kept[-lines:])


# --------------------------------------------------------------------------------------------------- RunInfo


@dataclass
class RunInfo:
    run_id: str
    path: Path
    state: str
    epoch: int = 0
    total_epochs: int = 0
    step: int = 0
    progress: float = 0.0
    metrics: dict = field(default_factory=dict)
    img_per_s: float | None = None
    eta_s: float | None = None
    started: str | None = None
    updated: str | None = None
    device: str | None = None
    config: str = ""
    pid: int | None = None
    error: str | None = None
    weights: str = ""                   # what the encoder got: WeightsInfo.summary() from status.json
    weights_source: str | None = None   # downloaded | cached | local | random | none (None: not known yet)
    phase: str | None = None   # e.g. "downloading encoder weights: 40/87 MB", "train", "eval"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _ts(value: Any) -> float | None:
    """A status/metrics time (epoch seconds or ISO string) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return _dt.datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _iso(value: Any) -> str | None:
    t = _ts(value)
    return None if t is None else _dt.datetime.fromtimestamp(t).isoformat(timespec="seconds")


def config_summary(cfg: dict) -> str:
    if not cfg:
        return ""
    parts = [f"{cfg.get('arch', '?')}/{cfg.get('encoder', '?')}", str(cfg.get("product", ""))]
    for key, label in (("crop_size", "crop"), ("batch_size", "bs"), ("epochs", "ep"), ("lr", "lr")):
        if cfg.get(key) is not None:
            parts.append(f"{label} {cfg[key]}")
    if cfg.get("boundary"):
        parts.append("boundary")
    return " ".join(p for p in parts if p)


def run_info(run_dir: str | os.PathLike) -> RunInfo:
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    cfg = read_config(run_dir)
    state = effective_state(run_dir, status)
    metrics = read_metrics(run_dir)
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    steps = [m for m in metrics if m.get("kind") == "step"]
    total = int(status.get("total_epochs") or cfg.get("epochs") or 0)
    done_epochs = len({m.get("epoch") for m in epochs})
    if state == "finished":
        progress = 1.0
    elif total:
        frac = 0.0
        spe = status.get("steps_per_epoch") or cfg.get("steps_per_epoch")
        if spe and state in ACTIVE_STATES + ("stopped", "interrupted", "failed"):
            if status.get("epoch_step") is not None:
                in_epoch = int(status["epoch_step"])
            elif steps:
                in_epoch = int(steps[-1].get("step", 0)) - int(spe) * done_epochs
            else:
                in_epoch = 0
            frac = min(max(in_epoch / float(spe), 0.0), 0.999)
        progress = min((done_epochs + frac) / total, 1.0)
    else:
        progress = 0.0
    img_per_s = None
    for m in reversed(steps):
        if m.get("img_per_s"):
            img_per_s = float(m["img_per_s"])
            break
    if img_per_s is None and status.get("img_per_s"):
        img_per_s = float(status["img_per_s"])
    started = _ts(status.get("started")) or _ts(_read_json(run_dir / LAUNCH_NAME).get("time"))
    updated = _ts(status.get("heartbeat")) or _ts(status.get("updated"))
    eta = None
    if state == "running" and started and 0 < progress < 1:
        elapsed = max((updated or time.time()) - started, 0.0)
        eta = elapsed * (1 - progress) / progress
    last_epoch = epochs[-1] if epochs else {}
    shown = {k: v for k, v in last_epoch.items() if k.startswith("val_") or k in ("loss", "epoch")}
    try:
        pid = int(status["pid"]) if status.get("pid") else None
    except (TypeError, ValueError):
        pid = None
    got = status.get("weights") if isinstance(status.get("weights"), dict) else {}
    return RunInfo(
        weights=str(got.get("summary") or ""),
        weights_source=got.get("source"),
        phase=status.get("phase") if state in ACTIVE_STATES else None,
        run_id=run_dir.name,
        path=run_dir,
        state=state,
        epoch=int(status.get("epoch") or done_epochs or 0),
        total_epochs=total,
        step=int(status.get("step") or (steps[-1].get("step", 0) if steps else 0) or 0),
        progress=float(progress),
        metrics=shown,
        img_per_s=img_per_s,
        eta_s=eta,
        started=_iso(started),
        updated=_iso(updated),
        device=status.get("device") or cfg.get("device"),
        config=config_summary(cfg),
        pid=pid,
        error=status.get("error") or status_problem(run_dir, status) or (
            f"the trainer exited before reporting; train.log says: {log_tail(run_dir)}" if state == "failed" else None),
    )


def status_problem(run_dir: Path, status: dict | None = None) -> str | None:
    """A message when ``status.json`` exists but cannot be read (the run's checkpoints are unaffected)."""
    path = Path(run_dir) / "status.json"
    if (status if status is not None else read_status(run_dir)) or not path.exists():
        return None
    return (f"{path} is unreadable (corrupt or not a JSON object); checkpoints and metrics are intact: "
            f"`python -m bdcore resume {Path(run_dir).name}` rewrites it")


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """All runs under ``runs_dir()`` (folders with a config.json), newest first."""
    root = Path(root) if root is not None else runs_dir()
    infos = []
    for d in root.iterdir() if root.is_dir() else []:
        if d.is_dir() and (d / "config.json").exists():
            infos.append(run_info(d))
    infos.sort(key=lambda i: (i.path / "config.json").stat().st_mtime, reverse=True)
    return infos


# ----------------------------------------------------------------------------------------------- create/launch


def _config_dict(cfg: Any) -> dict:
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    if isinstance(cfg, dict):
        return dict(cfg)
    raise TypeError(f"expected a RunConfig or dict, got {type(cfg).__name__}")


def create_run(cfg: Any, name: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """A new run folder with ``config.json`` and a ``queued`` status; returns its path."""
    root = Path(root) if root is not None else runs_dir()
    data = _config_dict(cfg)
    if name is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        slug = _slug(f"{data.get('arch', 'run')}-{data.get('encoder', '')}")
        base = f"{stamp}-{slug}"
        name, i = base, 1
        while (root / name).exists():
            i += 1
            name = f"{base}-{i}"
    validate_run_name(name)
    run_dir = root / name
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise RunError(f"run {name!r} already exists in {root}: pick another --name or resume it") from None
    try:
        atomic_write_json(run_dir / "config.json", data)
        atomic_write_json(
            run_dir / "status.json",
            {"state": "queued", "epoch": 0, "step": 0, "total_epochs": data.get("epochs"), "created": time.time()},
        )
    except BaseException:  # e.g. disk full: leave no half-made run folder behind
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def _acquire_lock(run_dir: Path) -> int:
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        st = read_status(run_dir)
        raise RunError(
            f"run {run_dir.name} is already running (pid {st.get('pid', '?')}, lock {run_dir / LOCK_NAME}): "
            "stop it first with `python -m bdcore stop " + run_dir.name + "`"
        ) from None
    return fd


def launch(run_dir: str | os.PathLike, resume: bool = False, module: str | None = None,
           extra_env: dict | None = None) -> int:
    """Start the trainer as a detached process (own session, output to ``train.log``); returns its pid.

    The process survives the caller (Streamlit restarts, a closed terminal). Refused if the run is already
    being trained. The child (``sys.executable -m bdcore.engine.train``, cwd = the run folder) imports the installed
    ``bdcore`` package (``pip install -e .``, which requirements.txt does).
    """
    run_dir = Path(run_dir).resolve()
    if not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} has no config.json: create the run with create_run() or `python -m bdcore train`")
    if not _lock_held(run_dir) and is_alive(run_dir):
        st = read_status(run_dir)
        raise RunError(f"run {run_dir.name} is already running (pid {st.get('pid')}): stop it first")
    fd = _acquire_lock(run_dir)
    try:
        cmd = [sys.executable, "-m", module or TRAIN_MODULE, "--run-dir", str(run_dir)]
        if resume:
            cmd.append("--resume")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["BDCORE_RUN_LOCK_FD"] = str(fd)
        if extra_env:
            env.update(extra_env)
        with open(run_dir / "train.log", "ab") as log, open(os.devnull, "rb") as devnull:
            log.write(f"\n=== {_dt.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(run_dir),
                start_new_session=True, pass_fds=(fd,), close_fds=True,
            )
    finally:
        os.close(fd)  # the child's copy keeps the lock
    _CHILDREN[proc.pid] = proc
    atomic_write_json(run_dir / LAUNCH_NAME, {"pid": proc.pid, "cmd": cmd, "time": time.time(), "resume": resume})
    return proc.pid


def wait_run(run_dir: str | os.PathLike, timeout: float | None = None, poll: float = 0.5) -> str:
    """Block until the run's process is gone (or timeout); returns the effective state."""
    run_dir = Path(run_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    while is_alive(run_dir):
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(poll)
    return effective_state(run_dir)


# ----------------------------------------------------------------------------------------- stop/resume/delete


def _signal_run(run_dir: Path, sig: int, group: bool = False) -> bool:
    """Send ``sig`` to the trainer (``group``: to its whole process group, DataLoader workers included)."""
    pids = []
    for src in (_read_json(run_dir / LAUNCH_NAME), read_status(run_dir)):
        if src.get("pid") and _pid_alive(src["pid"]):
            pids.append(int(src["pid"]))
    sent = False
    for pid in dict.fromkeys(pids):
        try:
            if group:
                os.killpg(os.getpgid(pid), sig)
            else:
                os.kill(pid, sig)
            sent = True
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def stop_run(run_dir: str | os.PathLike, timeout: float = 60.0) -> str:
    """SIGTERM to the trainer (it finishes the step, saves ``last.pt`` and marks itself ``stopped``), wait for it to
    exit; SIGKILL to its whole process group after ``timeout``. Returns the state afterwards.

    SIGTERM goes to the main process only: DataLoader workers share its process group and die on SIGTERM, which the
    trainer would report as a failure instead of stopping cleanly; they exit with their parent."""
    run_dir = run_path(run_dir)
    if not is_alive(run_dir):
        state = effective_state(run_dir)
        raise RunError(f"run {run_dir.name} is not running (state {state}): nothing to stop")
    _signal_run(run_dir, signal.SIGTERM)
    state = wait_run(run_dir, timeout=timeout, poll=0.2)
    if is_alive(run_dir):
        _signal_run(run_dir, signal.SIGKILL, group=True)
        state = wait_run(run_dir, timeout=10, poll=0.2)
    if state in ACTIVE_STATES or state == "interrupted":
        # killed before it could write its own final state: record it (the trainer is gone, so we are the writer)
        st = read_status(run_dir)
        st.update(state="stopped", stopped_by="stop_run", heartbeat=time.time())
        atomic_write_json(run_dir / "status.json", st)
        state = "stopped"
    return state


def resume_run(run_dir: str | os.PathLike) -> int:
    """Relaunch a stopped/interrupted/failed run from its ``last.pt``; returns the pid."""
    run_dir = run_path(run_dir)
    state = effective_state(run_dir)
    if state in ACTIVE_STATES:
        raise RunError(f"run {run_dir.name} is {state}: it is still being trained, nothing to resume")
    if state == "finished":
        raise RunError(f"run {run_dir.name} is finished: all epochs done; start a new run to train longer")
    if not (run_dir / "last.pt").exists():
        # nothing durable yet (it never finished a checkpoint): start over, keeping the old metrics aside
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            os.replace(metrics, run_dir / f"metrics-before-restart-{int(time.time())}.jsonl")
        return launch(run_dir, resume=False)
    return launch(run_dir, resume=True)


def delete_run(run_dir: str | os.PathLike) -> None:
    """Remove a run folder (refused while it is being trained)."""
    run_dir = run_path(run_dir)
    if is_alive(run_dir):
        raise RunError(f"run {run_dir.name} is running: stop it before deleting it")
    root = runs_dir().resolve()
    if run_dir.resolve().parent != root and not (run_dir / "config.json").exists():
        raise RunError(f"{run_dir} does not look like a run folder (no config.json): not deleting it")
    shutil.rmtree(run_dir)


# ------------------------------------------------------------------------------------------------------ CLI

def _int_or_none(text: str) -> int | None:
    return None if text.strip().lower() in ("none", "null", "") else int(text)


# RunConfig fields offered as flags, with their argparse types (values are validated by RunConfig itself).
_CLI_FIELDS: dict[str, Any] = {
    "data_root": str, "product": str, "arch": str, "encoder": str, "encoder_weights": str, "epochs": int,
    "batch_size": int, "crop_size": _int_or_none, "lr": float, "weight_decay": float, "val_fraction": float, "split": str,
    "schedule": str, "warmup_epochs": float, "seed": int, "device": str, "workers": int, "steps_per_epoch": _int_or_none,
    "eval_every": int, "log_every": int, "grad_clip": float, "threshold": float, "samples_per_tile": int,
    "bce_weight": float, "dice_weight": float, "building_f1_tiles": int,
}
_BOOL_FIELDS = ("boundary", "amp")


def _run_config_cls():
    from bdcore.engine.config import RunConfig

    return RunConfig


def _progress_line(info: RunInfo) -> str:
    m = info.metrics
    bits = [f"{info.run_id}", info.state, f"epoch {info.epoch}/{info.total_epochs}", f"step {info.step}",
            f"{info.progress * 100:5.1f}%"]
    if info.phase and info.phase not in ("train", "starting"):
        bits.append(info.phase)
    if info.img_per_s:
        bits.append(f"{info.img_per_s:.1f} img/s")
    if m.get("val_iou") is not None:
        bits.append(f"val_iou {m['val_iou']:.3f}")
    if info.eta_s is not None:
        bits.append(f"eta {format_eta(info.eta_s)}")
    return "  ".join(bits)


def _follow(run_dir: Path, pid: int) -> int:
    """Print a progress line until the process ends; Ctrl-C stops the run (it saves first)."""
    last = ""
    try:
        while is_alive(run_dir):
            line = _progress_line(run_info(run_dir))
            if line != last:
                print("\r" + line.ljust(100), end="", flush=True)
                last = line
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping (saving last.pt)...", flush=True)
        stop_run(run_dir)
    info = run_info(run_dir)
    print("\r" + _progress_line(info).ljust(100))
    if info.state == "failed":
        print(f"run failed: {info.error or 'see ' + str(run_dir / 'train.log')}", file=sys.stderr)
        return 1
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    RunConfig = _run_config_cls()
    cfg = RunConfig.load(args.config) if args.config else RunConfig()
    updates = {k: getattr(args, k) for k in list(_CLI_FIELDS) + list(_BOOL_FIELDS) if hasattr(args, k)}
    if updates:
        cfg = RunConfig.from_dict({**cfg.model_dump(), **updates}, source="command-line flags")
    if cfg.data_root.strip() not in ("", "demo"):  # refuse a bad data folder now, not in the detached trainer
        from bdcore.data.catalog import labelled_tiles, load_catalog

        labelled_tiles(load_catalog(cfg.resolved_data_root()), cfg.product)
    run_dir = create_run(cfg, name=args.name)
    if args.create_only:  # e.g. for `torchrun ... -m bdcore.engine.train --run-dir RUN_DIR`
        print(run_dir)
        return 0
    return _report_started(run_dir, launch(run_dir), args.detach, f"run {run_dir.name}")


def _cmd_resume(args: argparse.Namespace) -> int:
    run_dir = run_path(args.run)
    return _report_started(run_dir, resume_run(run_dir), args.detach, f"resumed {run_dir.name}")


def _report_started(run_dir: Path, pid: int, detach: bool, what: str) -> int:
    """--detach: print the run id and return; else follow the run in the foreground until it ends."""
    if detach:
        print(run_dir.name)
        return 0
    print(f"{what} (pid {pid}, log {run_dir / 'train.log'})")
    return _follow(run_dir, pid)


def _cmd_runs(args: argparse.Namespace) -> int:
    infos = list_runs()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2, default=str))
        return 0
    if not infos:
        print(f"no runs in {runs_dir()}")
        return 0
    header = f"{'RUN':<40} {'STATE':<12} {'EPOCH':>7} {'PROG':>6} {'VAL_IOU':>8} {'ETA':>8} {'WEIGHTS':<10}  CONFIG"
    print(header)
    for i in infos:
        iou = i.metrics.get("val_iou")
        enc = i.weights_source or "-"
        print(f"{i.run_id:<40} {i.state:<12} {f'{i.epoch}/{i.total_epochs}':>7} {i.progress * 100:5.1f}% "
              f"{'-' if iou is None else f'{iou:.3f}':>8} {format_eta(i.eta_s, none='-'):>8} {enc:<10}  {i.config}")
        if i.weights:
            print(f"  weights: {i.weights}")
        problem = status_problem(i.path)
        if problem:
            print(f"  note: {problem}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    state = stop_run(run_path(args.run), timeout=args.timeout)
    print(f"{args.run}: {state}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("train", help="start a training run (foreground progress, or --detach)")
    p.add_argument("--config", help="RunConfig YAML/JSON file; flags below override it")
    p.add_argument("--name", help="run id (default: timestamp + arch/encoder)")
    p.add_argument("--detach", action="store_true", help="print the run id and return; the run goes on")
    p.add_argument("--create-only", action="store_true",
                   help="write the run folder (config.json) and print its path without starting it (for torchrun)")
    for name, typ in _CLI_FIELDS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=argparse.SUPPRESS)
    for name in _BOOL_FIELDS:
        p.add_argument(f"--{name}", dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("resume", help="resume a stopped/interrupted/failed run from last.pt")
    p.add_argument("run", help="run id or folder")
    p.add_argument("--detach", action="store_true")
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("runs", help="list training runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_runs)

    p = sub.add_parser("stop", help="stop a running run (it saves last.pt first)")
    p.add_argument("run", help="run id or folder")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=_cmd_stop)
