"""Training runs as detached processes: create, launch, list, stop, resume, delete.

A run is a folder ``runs_dir()/<run-id>/`` (file names and readers: ``bdcore.engine.rundir``). This module writes
``config.json`` and the first ``status.json`` (``create_run``), ``launch.json`` (pid, command, time) and ``.lock``,
and a final ``status.json`` only for a trainer that was killed before it could write its own.

One writer per run folder: :func:`launch` takes an exclusive ``flock`` on ``run_dir/.lock`` and hands the locked
file descriptor to the training process (``pass_fds``), so the lock is held exactly as long as the trainer lives
(a ``kill -9`` releases it too). A second launch of the same run finds the lock taken and is refused, and
"is it running?" is answered by probing the lock, which is immune to pid reuse.

Signals go only to a verified trainer: the pid's start time (``/proc/<pid>/stat``) must be the one recorded in
``launch.json`` / ``status.json`` (``pid_start``), or, where none was recorded, its command line must name the run
folder (``--run-dir``). A pid reused by another process is never signalled.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
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
from bdcore.data.catalog import load_catalog
from bdcore.data.split import EXCLUDE_FIX, config_split
from bdcore.engine.config import RunConfig
from bdcore.engine.rundir import RunDir, log_tail, read_config, read_launch, read_metrics, read_status, update_status
from bdcore.paths import runs_dir

ACTIVE_STATES = ("queued", "running")
TRAIN_MODULE = "bdcore.engine.train"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")  # used with fullmatch: "$" would accept a trailing newline
# torchrun / Kubeflow process-group variables: a detached single-process trainer inheriting them from the app's
# environment would wait in init_process_group for ranks that never come, so launch() clears them.
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
            "ROLE_WORLD_SIZE", "ROLE_NAME", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
DIST_ENV_PREFIXES = ("TORCHELASTIC_",)

# Popen objects of runs launched by this process, so finished children are reaped (no zombies in a long-lived app).
_CHILDREN: dict[int, subprocess.Popen] = {}


class RunError(ValueError):
    """A run cannot be created/launched/stopped/resumed/deleted as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------------------- paths


def validate_run_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
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
    if not RunDir(p).is_run():
        raise RunError(f"{p} is not a run folder (no {RunDir.CONFIG}): give a run id from `python -m bdcore runs` "
                       "or a folder made by `python -m bdcore train`")
    return p


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "run"


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


def process_start_time(pid: int) -> int | None:
    """When the process started (clock ticks after boot, ``/proc/<pid>/stat`` field 22); with the pid it names one
    process, so a reused pid is told apart. None when unknown (no such process, no ``/proc``)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None


def _names_run_dir(cmd: list[str], cwd: str | None, run_dir: Path) -> bool:
    """The command line has ``--run-dir DIR`` (or ``--run-dir=DIR``) naming ``run_dir``: true of launch()'s child and
    of every torchrun worker (and of the torchrun parent, whose group is the workers')."""
    for i, arg in enumerate(cmd):
        value = cmd[i + 1] if arg == "--run-dir" and i + 1 < len(cmd) else (
            arg[len("--run-dir="):] if arg.startswith("--run-dir=") else None)
        if value is None:
            continue
        try:
            if os.path.samefile(os.path.join(cwd or "", value), run_dir):
                return True
        except OSError:
            continue
    return False


def trainer_mismatch(run_dir: Path, pid: int, pid_start: Any = None) -> str | None:
    """None when live ``pid`` is this run's trainer; else what the process is (its command line), for the message.

    A recorded start time (``pid_start``: launch() and the trainer write it) decides; without one, the command line
    must name the run folder. Without ``/proc`` (not Linux) nothing can be checked and the pid is trusted."""
    if not os.path.isdir("/proc/self"):
        return None
    cmd = _cmdline(pid)
    if isinstance(pid_start, int):
        if process_start_time(pid) == pid_start:
            return None
    elif cmd:
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = None
        if _names_run_dir(cmd, cwd, run_dir):
            return None
    text = " ".join(cmd) if cmd else "a process whose command line cannot be read"
    return text if len(text) <= 200 else text[:197] + "..."


def _same_process(pid: Any, pid_start: Any) -> bool:
    """False only when a start time was recorded and the live ``pid`` started at another time (a reused pid)."""
    if not isinstance(pid_start, int):
        return True
    now = process_start_time(pid)
    return now is None or now == pid_start


def _lock_held(run_dir: Path) -> bool:
    """True if some process holds the run's flock (i.e. its trainer is alive)."""
    path = RunDir(run_dir).lock
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
    launch = read_launch(run_dir)
    # The lock covers processes started by launch(); a trainer started another way (torchrun, a notebook) is
    # only visible through its pid.
    if status.get("state") in ACTIVE_STATES and status.get("pid") and status.get("pid") != launch.get("pid"):
        return _pid_alive(status.get("pid")) and _same_process(status.get("pid"), status.get("pid_start"))
    return _pid_alive(launch.get("pid")) and launch.get("pid") in _CHILDREN


def effective_state(run_dir: str | os.PathLike, status: dict | None = None) -> str:
    """The state to show: status.json's, except an active state with no live process is ``interrupted``."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) if status is None else status
    state = status.get("state") or "unknown"
    if state in ACTIVE_STATES:
        if is_alive(run_dir):
            return state
        if state == "queued" and status.get("queued_at") and \
                float(read_launch(run_dir).get("time") or 0) < float(status["queued_at"]):
            return state  # waiting in the run queue (bdcore.engine.queue), not launched since it was queued
        if state == "running" or status.get("pid"):
            return "interrupted"
        # launched, but the trainer died before it ever reported (bad environment, import error, ...)
        return "failed" if RunDir(run_dir).launch.exists() else "queued"
    return state


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
    queue_position: int | None = None  # 1-based place in the run queue while it waits for a slot
    excluded_tiles: list[str] = field(default_factory=list)  # left out for bad labels (exclude_bad_labels)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _ts(value: Any) -> float | None:
    """A status/launch time (epoch seconds, as every writer stores it) or None."""
    return float(value) if isinstance(value, (int, float)) else None


def _iso(t: float | None) -> str | None:
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


def _progress(state: str, status: dict, cfg: dict, done_epochs: int, steps: list[dict], total: int) -> float:
    """Fraction of the run done: finished epochs plus the share of the current one (never 1 before it finishes)."""
    if state == "finished":
        return 1.0
    if not total:
        return 0.0
    frac = 0.0
    spe = status.get("steps_per_epoch") or cfg.get("steps_per_epoch")  # status: the trainer's; config: the cap
    if spe and state in ACTIVE_STATES + ("stopped", "interrupted", "failed"):
        if status.get("epoch_step") is not None:
            in_epoch = int(status["epoch_step"])
        elif steps:
            in_epoch = int(steps[-1].get("step", 0)) - int(spe) * done_epochs
        else:
            in_epoch = 0
        frac = min(max(in_epoch / float(spe), 0.0), 0.999)
    return min((done_epochs + frac) / total, 1.0)


def run_info(run_dir: str | os.PathLike) -> RunInfo:
    """What the runs table shows for one run. ``status.json`` first; where it lacks a value (queued, never
    started, or unreadable) the config, the metrics log and ``launch.json`` fill in."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    cfg = read_config(run_dir)
    state = effective_state(run_dir, status)
    metrics = read_metrics(run_dir)
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    steps = [m for m in metrics if m.get("kind") == "step"]
    total = int(status.get("total_epochs") or cfg.get("epochs") or 0)
    done_epochs = len({m.get("epoch") for m in epochs})
    progress = _progress(state, status, cfg, done_epochs, steps, total)
    img_per_s = next((float(m["img_per_s"]) for m in reversed(steps) if m.get("img_per_s")), None)
    started = _ts(status.get("started")) or _ts(read_launch(run_dir).get("time"))
    updated = _ts(status.get("heartbeat"))
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
        excluded_tiles=[str(t) for t in status.get("excluded_tiles") or []],
        phase=status.get("phase") if state in ACTIVE_STATES else None,
        queue_position=_queue_position(run_dir) if state == "queued" else None,
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
            f"the trainer exited before reporting; {RunDir.LOG} says: {log_tail(run_dir)}"
            if state == "failed" else None),
    )


def _queue_position(run_dir: Path) -> int | None:
    from bdcore.engine import queue

    return queue.position(run_dir)


def status_problem(run_dir: Path, status: dict | None = None) -> str | None:
    """A message when ``status.json`` exists but cannot be read (the run's checkpoints are unaffected)."""
    path = RunDir(run_dir).status
    if (status if status is not None else read_status(run_dir)) or not path.exists():
        return None
    return (f"{path} is unreadable (corrupt or not a JSON object); checkpoints and metrics are intact: "
            f"`python -m bdcore resume {Path(run_dir).name}` rewrites it")


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """All runs under ``runs_dir()`` (folders with a config.json), newest first."""
    root = Path(root) if root is not None else runs_dir()
    infos = []
    for d in root.iterdir() if root.is_dir() else []:
        if d.is_dir() and RunDir(d).config.exists():
            infos.append(run_info(d))
    infos.sort(key=lambda i: RunDir(i.path).config.stat().st_mtime, reverse=True)
    return infos


# ----------------------------------------------------------------------------------------------- create/launch


def _config_dict(cfg: RunConfig | dict) -> dict:
    if isinstance(cfg, RunConfig):
        return cfg.model_dump(mode="json")
    if isinstance(cfg, dict):
        return dict(cfg)
    raise TypeError(f"expected a RunConfig or dict, got {type(cfg).__name__}")


def create_run(cfg: RunConfig | dict, name: str | None = None, root: str | os.PathLike | None = None) -> Path:
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
    run = RunDir(root / name)
    run_dir = run.path
    try:
        run_dir.mkdir(parents=True)
    except FileExistsError:
        raise RunError(f"run {name!r} already exists in {root}: pick another --name or resume it") from None
    try:
        atomic_write_json(run.config, data)
        atomic_write_json(
            run.status,
            {"state": "queued", "epoch": 0, "step": 0, "total_epochs": data.get("epochs"), "created": time.time()},
        )
    except BaseException:  # e.g. disk full: leave no half-made run folder behind
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def create_checked_run(cfg: RunConfig, name: str | None = None, catalog=None,
                       fix: str = EXCLUDE_FIX, root: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """``create_run`` after the checks a detached trainer would otherwise fail on later: the data folder has
    labelled tiles, the split can be made, and no train/val tile has an unusable labels file (``BadLabelsError``
    listing all of them, ending with ``fix``). With ``cfg.exclude_bad_labels`` those tiles are left out instead and
    recorded as ``excluded_tiles`` in ``status.json``. Returns (run folder, tiles left out).

    ``catalog``: the data folder's catalog if the caller has it; without it the demo AOI is not checked (it is
    written on first use, by the trainer)."""
    excluded: list[str] = []
    if catalog is not None or cfg.data_root.strip() not in ("", "demo"):
        split = config_split(catalog if catalog is not None else load_catalog(cfg.resolved_data_root()), cfg)
        split.check_labels(fix)
        excluded = split.excluded
    run_dir = create_run(cfg, name=name, root=root)
    if excluded:
        update_status(run_dir, excluded_tiles=excluded)
    return run_dir, excluded


def _acquire_lock(run_dir: Path) -> int:
    fd = os.open(RunDir(run_dir).lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        st = read_status(run_dir)
        raise RunError(
            f"run {run_dir.name} is already running (pid {st.get('pid', '?')}, lock {RunDir(run_dir).lock}): "
            "stop it first with `python -m bdcore stop " + run_dir.name + "`"
        ) from None
    return fd


def trainer_command(run_dir: Path, resume: bool = False, module: str | None = None) -> list[str]:
    """The trainer's command line: ``python -m bdcore.engine.train --run-dir RUN``, under
    ``torchrun --standalone --nproc_per_node=N`` (one process per GPU, DDP; gloo processes on a CPU machine) when
    the run's config asks for ``gpus`` > 1."""
    gpus = max(1, int(read_config(run_dir).get("gpus") or 1))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"] if gpus > 1 else []
    return [sys.executable, *launcher, "-m", module or TRAIN_MODULE, "--run-dir", str(run_dir),
            *(["--resume"] if resume else [])]


def launch(run_dir: str | os.PathLike, resume: bool = False, module: str | None = None,
           extra_env: dict | None = None) -> int:
    """Start the trainer as a detached process (own session, output to ``train.log``); returns its pid.

    The process survives the caller (Streamlit restarts, a closed terminal). Refused if the run is already
    being trained. The child (``sys.executable -m bdcore.engine.train``, cwd = the run folder) imports the installed
    ``bdcore`` package (``pip install -e .``, which requirements.txt does).
    """
    run = RunDir(Path(run_dir).resolve())
    run_dir = run.path
    if not run.is_run():
        raise RunError(f"{run_dir} has no {run.CONFIG}: create the run with create_run() or `python -m bdcore train`")
    if not _lock_held(run_dir) and is_alive(run_dir):
        st = read_status(run_dir)
        raise RunError(f"run {run_dir.name} is already running (pid {st.get('pid')}): stop it first")
    fd = _acquire_lock(run_dir)
    try:
        cmd = trainer_command(run_dir, resume, module)
        env = {k: v for k, v in os.environ.items() if k not in DIST_ENV and not k.startswith(DIST_ENV_PREFIXES)}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["BDCORE_RUN_LOCK_FD"] = str(fd)
        if extra_env:
            env.update(extra_env)
        with open(run.log, "ab") as log, open(os.devnull, "rb") as devnull:
            log.write(f"\n=== {_dt.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(run_dir),
                start_new_session=True, pass_fds=(fd,), close_fds=True,
            )
    finally:
        os.close(fd)  # the child's copy keeps the lock
    _CHILDREN[proc.pid] = proc
    atomic_write_json(run.launch, {"pid": proc.pid, "pid_start": process_start_time(proc.pid), "cmd": cmd,
                                   "time": time.time(), "resume": resume})
    return proc.pid


SUBMISSIONS = ".submissions.json"  # in the runs folder: recent start requests, for start_run's de-duplication
DUPLICATE_WINDOW_S = 10.0


def _submission_key(data: dict, name: str | None) -> str:
    return hashlib.sha256(json.dumps([data, name], sort_keys=True).encode()).hexdigest()[:16]


def submit(run_dir: str | os.PathLike, resume: bool = False) -> int | None:
    """Start the run now if the machine has a free slot, else leave it queued (it starts by itself when one frees:
    ``bdcore.engine.queue``); returns the trainer's pid, or None while it waits."""
    from bdcore.engine import queue

    run_dir = Path(run_dir)
    queue.enqueue(run_dir, resume=resume)
    return queue.pump(run_dir.parent).get(run_dir.name)


@dataclass
class StartResult:
    """What :func:`start_run` did: started (``pid``), queued (``position``), or found a duplicate request."""

    run_dir: Path
    pid: int | None = None
    position: int | None = None
    duplicate: bool = False
    excluded: list[str] = field(default_factory=list)  # tiles left out for bad labels (create_checked_run)


def start_run(cfg: RunConfig | dict, name: str | None = None, root: str | os.PathLike | None = None,
              window_s: float = DUPLICATE_WINDOW_S, catalog=None, fix: str = EXCLUDE_FIX) -> StartResult:
    """Create a run with :func:`create_checked_run`'s checks (``catalog``, ``fix``) and start it (or queue it when
    the machine is busy), once per request.

    The same settings submitted again within ``window_s`` seconds (Enter in a form field, then a click on its
    button; a double click; two tabs) return the run the first request started instead of a second one. The
    check and the creation happen under an exclusive lock on the runs folder, so two processes or threads cannot
    both pass it. A deliberate second run with the same settings is possible after ``window_s`` or with another name.
    """
    if name is not None:
        validate_run_name(name)  # before anything is written
    root = Path(root) if root is not None else runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig(**_config_dict(cfg))
    data, now = _config_dict(cfg), time.time()
    key = _submission_key(data, name)
    fd = os.open(root / ".submit.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        recent = {}
        try:
            recent = json.loads((root / SUBMISSIONS).read_text())
            recent = recent if isinstance(recent, dict) else {}
        except (OSError, ValueError):
            pass
        recent = {k: v for k, v in recent.items()
                  if isinstance(v, dict) and now - float(v.get("time", 0)) < window_s}
        prior = recent.get(key)
        if prior and (root / str(prior.get("run", ""))).is_dir():
            return StartResult(root / prior["run"], duplicate=True)
        run_dir, excluded = create_checked_run(cfg, name=name, catalog=catalog, fix=fix, root=root)
        try:
            pid = submit(run_dir)
        except BaseException:
            from bdcore.engine import queue

            with contextlib.suppress(Exception):
                queue.cancel(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)  # never leave a run that nobody will start
            raise
        recent[key] = {"run": run_dir.name, "time": now}
        atomic_write_json(root / SUBMISSIONS, recent)
    finally:
        os.close(fd)
    from bdcore.engine import queue

    return StartResult(run_dir, pid=pid, position=None if pid else queue.position(run_dir), excluded=excluded)


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


def _trainer_pids(run_dir: Path) -> tuple[list[int], list[tuple[int, str]]]:
    """The live pids of ``launch.json`` / ``status.json``: (those verified as this run's trainer, [(pid, what it is)]
    of the others)."""
    ok: list[int] = []
    foreign: list[tuple[int, str]] = []
    for src in (read_launch(run_dir), read_status(run_dir)):
        if not src.get("pid") or not _pid_alive(src["pid"]) or int(src["pid"]) in ok:
            continue
        pid = int(src["pid"])
        what = trainer_mismatch(run_dir, pid, src.get("pid_start"))
        if what is None:
            ok.append(pid)
            foreign = [f for f in foreign if f[0] != pid]
        elif all(f[0] != pid for f in foreign):
            foreign.append((pid, what))
    return ok, foreign


def _not_the_trainer(run_dir: Path, pid: int, what: str) -> RunError:
    """The refusal to signal a pid that is not the run's trainer; with no lock held the trainer is gone, so the run
    is marked ``interrupted`` (resumable) instead of showing as running forever."""
    msg = f'run {run_dir.name}: pid {pid} is not this run\'s trainer (it is "{what}"); not signalled'
    if _lock_held(run_dir):
        return RunError(f"{msg}; another process holds the run's lock {RunDir(run_dir).lock}: stop that one")
    update_status(run_dir, state="interrupted", heartbeat=time.time(),
                  error=f"the trainer is gone (pid {pid} now belongs to another process)")
    return RunError(f"{msg}; no process holds the run's lock, so its trainer is gone: marked interrupted "
                    f"(resume it with `python -m bdcore resume {run_dir.name}`)")


def _signal_run(run_dir: Path, sig: int, group: bool = False) -> bool:
    """Send ``sig`` to the verified trainer (``group``: to its whole process group, DataLoader workers included)."""
    sent = False
    for pid in _trainer_pids(run_dir)[0]:
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
    exit; SIGKILL to its whole process group after ``timeout``. Returns the state afterwards. A recorded pid that is
    not this run's trainer (reused by another process) is not signalled: ``RunError`` saying what it is.

    SIGTERM goes to the main process only (its DataLoader workers ignore SIGTERM anyway, ``dataset.worker_init``, so a
    signal to the whole group, e.g. from torchrun, stops cleanly too); they exit with their parent."""
    run_dir = run_path(run_dir)
    if not is_alive(run_dir):
        state = effective_state(run_dir)
        raise RunError(f"run {run_dir.name} is not running (state {state}): nothing to stop")
    pids, foreign = _trainer_pids(run_dir)
    if foreign and not pids:
        raise _not_the_trainer(run_dir, *foreign[0])
    _signal_run(run_dir, signal.SIGTERM)
    state = wait_run(run_dir, timeout=timeout, poll=0.2)
    if is_alive(run_dir):
        _signal_run(run_dir, signal.SIGKILL, group=True)
        state = wait_run(run_dir, timeout=10, poll=0.2)
    if state in ACTIVE_STATES or state == "interrupted":
        # killed before it could write its own final state: record it (the trainer is gone, so we are the writer)
        update_status(run_dir, state="stopped", stopped_by="stop_run", heartbeat=time.time())
        state = "stopped"
    return state


def resume_run(run_dir: str | os.PathLike) -> int | None:
    """Relaunch a stopped/interrupted/failed run from its ``last.pt``; returns the pid (None: queued until a slot
    frees)."""
    run_dir = run_path(run_dir)
    state = effective_state(run_dir)
    if state in ACTIVE_STATES:
        raise RunError(f"run {run_dir.name} is {state}: it is still being trained, nothing to resume")
    if state == "finished":
        raise RunError(f"run {run_dir.name} is finished: all epochs done; start a new run to train longer")
    run = RunDir(run_dir)
    if not run.last.exists():
        # nothing durable yet (it never finished a checkpoint): start over, keeping the old metrics aside
        run.metrics_aside()
        return submit(run_dir, resume=False)
    return submit(run_dir, resume=True)


def delete_run(run_dir: str | os.PathLike) -> None:
    """Remove a run folder (refused while it is being trained)."""
    run_dir = run_path(run_dir)
    if is_alive(run_dir):
        raise RunError(f"run {run_dir.name} is running: stop it before deleting it")
    root = runs_dir().resolve()
    if run_dir.resolve().parent != root and not RunDir(run_dir).is_run():
        raise RunError(f"{run_dir} does not look like a run folder (no {RunDir.CONFIG}): not deleting it")
    shutil.rmtree(run_dir)
