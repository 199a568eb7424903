"""Runs as detached processes: launch, list, kill -9 → interrupted, resume, stop, one writer per run, delete.

Process-management behaviour is tested against a small stand-in trainer (a real subprocess that writes
status/metrics/last.pt the way bdcore.engine.train does, with controllable speed); one test runs the real trainer
end to end on a tiny synthetic AOI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bdcore.engine import queue, runs
from bdcore.engine.rundir import read_metrics, read_status
from bdcore.engine.runs import RunError

FAKE_TRAINER = textwrap.dedent(
    '''
    """Stand-in for bdcore.engine.train: same files, same signals, controllable speed (FAKE_STEP_S)."""
    import argparse, json, os, signal, sys, time
    from pathlib import Path
    from bdcore.atomic import atomic_write_json

    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()
    run = Path(a.run_dir)
    cfg = json.loads((run / "config.json").read_text())
    epochs, spe = int(cfg["epochs"]), int(cfg.get("steps_per_epoch") or 4)
    step_s = float(os.environ.get("FAKE_STEP_S", "0.05"))
    step = 0
    if a.resume:
        step = json.loads((run / "last.pt").read_text())["step"]
    started = time.time()

    def status(state, **kw):
        atomic_write_json(run / "status.json", dict(state=state, pid=os.getpid(), epoch=step // spe, step=step,
                          steps_per_epoch=spe, epoch_step=step % spe,
                          total_epochs=epochs, heartbeat=time.time(), started=started, device="cpu", **kw))

    def save():
        atomic_write_json(run / "last.pt", {"step": step})

    def on_term(signum, frame):
        save(); status("stopped"); sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    status("running")
    with open(run / "metrics.jsonl", "a") as m:
        while step < epochs * spe:
            time.sleep(step_s)
            step += 1
            m.write(json.dumps(dict(kind="step", epoch=(step - 1) // spe, step=step, time=time.time(), lr=1e-3,
                                    loss=1.0 / step, img_per_s=100.0)) + "\\n"); m.flush()
            if step % spe == 0:
                m.write(json.dumps(dict(kind="epoch", epoch=step // spe, step=step, time=time.time(),
                                        loss=1.0 / step, val_iou=0.1 * step / spe, val_loss=0.5)) + "\\n"); m.flush()
                save()
            status("running")
    status("finished")
    from bdcore.engine import queue  # as bdcore.engine.train does: this run's slot frees, start the next
    queue.pump(run.parent, finishing=run.name)
    '''
)


@pytest.fixture()
def fake_trainer(tmp_path, monkeypatch):
    mod_dir = tmp_path / "fake_mod"
    mod_dir.mkdir()
    (mod_dir / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mod_dir), os.environ.get("PYTHONPATH", "")]))

    monkeypatch.setattr(runs, "TRAIN_MODULE", "fake_trainer")  # resume_run() relaunches through it too

    def start(run_dir, resume=False, step_s=0.05):
        os.environ["FAKE_STEP_S"] = str(step_s)  # restored by monkeypatch below
        return runs.launch(run_dir, resume=resume)

    monkeypatch.setenv("FAKE_STEP_S", "0.05")

    return start


def _cfg(epochs=2, steps_per_epoch=4, **kw):
    return {"arch": "Unet", "encoder": "resnet18", "product": "PS-RGB", "epochs": epochs,
            "steps_per_epoch": steps_per_epoch, "crop_size": 64, "batch_size": 2, **kw}


def _wait_for(pred, timeout=30.0, poll=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError("condition not reached in time")


def _state(run_dir):
    return runs.run_info(run_dir).state


def _wait_running(run_dir):
    _wait_for(lambda: read_status(run_dir).get("state") == "running" and read_metrics(run_dir))


# --------------------------------------------------------------------------------------------------- create


def test_create_run_writes_config_and_queued_status(tmp_path):
    run_dir = runs.create_run(_cfg(), name="exp-1", root=tmp_path)
    assert json.loads((run_dir / "config.json").read_text())["encoder"] == "resnet18"
    assert read_status(run_dir)["state"] == "queued"
    info = runs.list_runs(tmp_path)
    assert [i.run_id for i in info] == ["exp-1"]
    assert info[0].state == "queued" and info[0].progress == 0.0
    assert "Unet/resnet18" in info[0].config


def test_create_run_default_name_and_validation(tmp_path):
    a = runs.create_run(_cfg(), root=tmp_path)
    b = runs.create_run(_cfg(), root=tmp_path)
    assert a != b and a.name.endswith("unet-resnet18") and b.parent == tmp_path
    for bad in ("../escape", "a/b", "..", ".hidden", "", "x" * 200, "run\n"):  # "run\n": no trailing newline
        with pytest.raises(RunError, match="invalid run name"):
            runs.create_run(_cfg(), name=bad, root=tmp_path)
    assert not (tmp_path.parent / "escape").exists()
    runs.create_run(_cfg(), name="dup", root=tmp_path)
    with pytest.raises(RunError, match="already exists"):
        runs.create_run(_cfg(), name="dup", root=tmp_path)


def test_read_metrics_tolerates_partial_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n{"kind": "epoch", "epoch": 0}\n{"kind": "st')
    recs = read_metrics(tmp_path)
    assert [r["kind"] for r in recs] == ["step", "epoch"]
    assert read_metrics(tmp_path, kind="epoch") == [{"kind": "epoch", "epoch": 0}]
    assert read_metrics(tmp_path / "nope") == []


# ------------------------------------------------------------------------------------------ process lifecycle


def test_launch_lists_running_then_finished(tmp_path, fake_trainer):
    run_dir = runs.create_run(_cfg(epochs=2), name="r1", root=tmp_path)
    pid = fake_trainer(run_dir, step_s=0.1)
    assert pid > 0
    _wait_running(run_dir)
    info = runs.run_info(run_dir)
    assert info.state == "running" and info.pid == pid and 0 < info.progress < 1
    assert info.img_per_s == 100.0
    assert runs.wait_run(run_dir, timeout=30) == "finished"
    info = runs.run_info(run_dir)
    assert info.progress == 1.0 and info.epoch == 2 and info.total_epochs == 2
    assert info.metrics["val_iou"] == pytest.approx(0.2)
    assert "===" in (run_dir / "train.log").read_text()


def test_kill_9_shows_interrupted_and_resume_finishes(tmp_path, fake_trainer):
    run_dir = runs.create_run(_cfg(epochs=3), name="r2", root=tmp_path)
    pid = fake_trainer(run_dir, step_s=0.15)
    _wait_for(lambda: (run_dir / "last.pt").exists())
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: _state(run_dir) == "interrupted", timeout=10)
    assert read_status(run_dir)["state"] == "running"  # the file still says running; the list knows better
    step_at_kill = json.loads((run_dir / "last.pt").read_text())["step"]
    assert step_at_kill >= 4

    runs.resume_run(run_dir)
    assert runs.wait_run(run_dir, timeout=30) == "finished"
    steps = [r["step"] for r in read_metrics(run_dir, kind="step")]
    assert steps[-1] == 12 and steps.count(step_at_kill + 1) >= 1
    with pytest.raises(RunError, match="finished"):
        runs.resume_run(run_dir)


def test_stop_run_marks_stopped_and_resume_continues(tmp_path, fake_trainer):
    run_dir = runs.create_run(_cfg(epochs=50), name="r3", root=tmp_path)
    fake_trainer(run_dir, step_s=0.05)
    _wait_running(run_dir)
    assert runs.stop_run(run_dir, timeout=20) == "stopped"
    assert _state(run_dir) == "stopped"
    assert not runs.is_alive(run_dir)
    with pytest.raises(RunError, match="not running"):
        runs.stop_run(run_dir)
    runs.resume_run(run_dir)
    _wait_running(run_dir)
    assert _state(run_dir) == "running"
    runs.stop_run(run_dir, timeout=20)


def test_start_run_twice_within_the_window_starts_one_run(tmp_path, fake_trainer):
    """The same settings submitted twice at once (Enter, then a click on Start; two threads here) make one run;
    after the window, or under another name, a second run is deliberate and starts."""
    import threading

    root = tmp_path / "runs"
    cfg = _cfg(epochs=1, steps_per_epoch=2)
    results: list = []
    barrier = threading.Barrier(2)

    def submit():
        barrier.wait()
        results.append(runs.start_run(cfg, root=root))

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and results[0].run_dir == results[1].run_dir
    assert sorted(r.duplicate for r in results) == [False, True]
    assert [i.run_id for i in runs.list_runs(root)] == [results[0].run_dir.name]
    runs.wait_run(results[0].run_dir, timeout=60)
    again = runs.start_run(cfg, root=root, window_s=0.0)  # the window has passed
    assert not again.duplicate and again.pid is not None and again.run_dir != results[0].run_dir
    runs.wait_run(again.run_dir, timeout=60)
    other = runs.start_run(cfg, name="named", root=root)
    assert not other.duplicate and other.run_dir.name == "named"
    runs.wait_run(other.run_dir, timeout=60)
    assert len(runs.list_runs(root)) == 3


def _step_span(run_dir) -> tuple[float, float]:
    t = [r["time"] for r in read_metrics(run_dir) if r["kind"] == "step"]
    return min(t), max(t)


def test_queue_runs_three_starts_one_after_another(tmp_path, fake_trainer, monkeypatch):
    """Limit one run: three starts at once → one runs, two wait (positions 1, 2) and start by themselves in order
    as slots free (each finishing trainer starts the next); every run finishes and no two overlap in time."""
    monkeypatch.setenv("BDCORE_MAX_RUNS", "1")
    root = tmp_path / "runs"
    res = [runs.start_run(_cfg(epochs=1, steps_per_epoch=6), name=f"q{i}", root=root) for i in range(3)]
    assert res[0].pid is not None and [r.position for r in res[1:]] == [1, 2]
    assert [runs.run_info(r.run_dir).state for r in res[1:]] == ["queued", "queued"]
    assert runs.run_info(res[2].run_dir).queue_position == 2
    for r in res:
        _wait_for(lambda r=r: runs.run_info(r.run_dir).state == "finished", timeout=90)
    spans = sorted(_step_span(r.run_dir) for r in res)
    assert [_step_span(r.run_dir) for r in res] == spans  # started in the order they were queued
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), spans  # no overlap
    assert queue.entries(root) == []


def test_queue_survives_a_kill_9_of_the_process_that_would_start_the_next(tmp_path, fake_trainer, monkeypatch,
                                                                          capsys):
    monkeypatch.setenv("BDCORE_MAX_RUNS", "1")
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    root = tmp_path / "runs"
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(root))
    a = runs.start_run(_cfg(epochs=5, steps_per_epoch=4), name="a", root=root)
    b = runs.start_run(_cfg(epochs=1, steps_per_epoch=2), name="b", root=root)
    assert b.pid is None and b.position == 1
    _wait_running(a.run_dir)
    os.killpg(os.getpgid(a.pid), signal.SIGKILL)  # it never gets to start b
    _wait_for(lambda: runs.run_info(a.run_dir).state == "interrupted")
    time.sleep(0.5)
    assert runs.run_info(b.run_dir).state == "queued"  # not forgotten, not started by anyone yet
    from bdcore.cli import main as cli_main

    assert cli_main(["runs"]) == 0  # the next CLI call starts it
    assert "b " in capsys.readouterr().out
    _wait_for(lambda: runs.run_info(b.run_dir).state == "finished", timeout=60)
    assert queue.entries(root) == []


def test_queue_counts_gpus_first_in_first_out(tmp_path, monkeypatch):
    """3 GPUs: a 2-GPU run runs; a queued 2-GPU run waits for 2 free GPUs and the 1-GPU run behind it waits too
    (strict order, so a big run is not starved); when the first ends, both start."""
    monkeypatch.setenv("BDCORE_MAX_RUNS", "3")
    root = tmp_path / "runs"
    alive: set[str] = set()
    monkeypatch.setattr(runs, "is_alive", lambda d: Path(d).name in alive)

    def fake_launch(run_dir, resume=False, module=None):
        alive.add(Path(run_dir).name)
        runs.update_status(run_dir, state="running")
        return 1

    monkeypatch.setattr(runs, "launch", fake_launch)
    a = runs.create_run(_cfg(gpus=2), name="a", root=root)
    b = runs.create_run(_cfg(gpus=2), name="b", root=root)
    c = runs.create_run(_cfg(gpus=1), name="c", root=root)
    assert [runs.submit(d) for d in (a, b, c)] == [1, None, None]
    assert alive == {"a"} and [e["run"] for e in queue.entries(root)] == ["b", "c"]
    assert queue.need(a) == 2 and queue.position(c) == 2
    alive.discard("a")
    assert queue.pump(root) == {"b": 1, "c": 1}
    assert alive == {"b", "c"} and queue.entries(root) == []


def test_cancel_a_queued_run(tmp_path, fake_trainer, monkeypatch, capsys):
    monkeypatch.setenv("BDCORE_MAX_RUNS", "1")
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    root = tmp_path / "runs"
    monkeypatch.setenv("BDCORE_RUNS_DIR", str(root))
    a = runs.start_run(_cfg(epochs=2, steps_per_epoch=4), name="a", root=root)
    b = runs.start_run(_cfg(epochs=1, steps_per_epoch=2), name="b", root=root)
    from bdcore.cli import main as cli_main

    assert cli_main(["cancel", "b"]) == 0
    assert runs.run_info(b.run_dir).state == "cancelled"
    assert cli_main(["cancel", "a"]) == 2  # running: stop it instead
    assert "not queued (state running); stop it" in capsys.readouterr().err
    _wait_for(lambda: runs.run_info(a.run_dir).state == "finished", timeout=60)
    time.sleep(0.5)
    assert runs.run_info(b.run_dir).state == "cancelled" and not (b.run_dir / "metrics.jsonl").exists()


def test_second_launch_and_delete_refused_while_running(tmp_path, fake_trainer):
    run_dir = runs.create_run(_cfg(epochs=50), name="r4", root=tmp_path)
    fake_trainer(run_dir, step_s=0.05)
    _wait_running(run_dir)
    with pytest.raises(RunError, match="already running"):
        fake_trainer(run_dir)
    with pytest.raises(RunError, match="running"):
        runs.resume_run(run_dir)
    with pytest.raises(RunError, match="stop it before deleting"):
        runs.delete_run(run_dir)
    assert run_dir.is_dir()
    runs.stop_run(run_dir, timeout=20)
    runs.delete_run(run_dir)
    assert not run_dir.exists()


def test_launched_run_survives_its_caller(tmp_path, fake_trainer):
    """The caller (think: a Streamlit script run) exits right after launching; training goes on."""
    run_dir = runs.create_run(_cfg(epochs=2), name="r5", root=tmp_path)
    code = (
        "import sys; from bdcore.engine import runs; "
        f"print(runs.launch({str(run_dir)!r}, module='fake_trainer', extra_env={{'FAKE_STEP_S': '0.1'}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(runs.__file__).parents[2]))
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())
    assert runs.is_alive(run_dir)
    assert os.getsid(pid) == pid  # its own session: a closed terminal / killed parent does not take it down
    assert runs.wait_run(run_dir, timeout=30) == "finished"


def test_state_without_process_is_interrupted_not_running(tmp_path):
    """A status.json left saying "running" by a process that no longer exists (e.g. after a reboot)."""
    run_dir = runs.create_run(_cfg(), name="r6", root=tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": dead.pid, "heartbeat": time.time()}))
    assert _state(run_dir) == "interrupted"
    (run_dir / "status.json").write_text(json.dumps({"state": "failed", "pid": dead.pid, "error": "boom"}))
    info = runs.run_info(run_dir)
    assert info.state == "failed" and info.error == "boom"


def test_trainer_dying_before_it_reports_is_failed_with_the_log_line(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "TRAIN_MODULE", "bdcore_no_such_trainer_module")
    run_dir = runs.create_run(_cfg(), name="r7", root=tmp_path)
    runs.launch(run_dir)
    assert runs.wait_run(run_dir, timeout=60) == "failed"
    info = runs.run_info(run_dir)
    assert "No module named bdcore_no_such_trainer_module" in info.error
    # no checkpoint yet: resume starts it over (and fails again here, the same way)
    runs.resume_run(run_dir)
    assert runs.wait_run(run_dir, timeout=60) == "failed"


def test_cli_runs_table_and_stop_errors(tmp_path, monkeypatch, capsys):
    from bdcore.cli import main

    monkeypatch.setenv("BDCORE_RUNS_DIR", str(tmp_path))
    runs.create_run(_cfg(), name="cli-run")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "cli-run" in out and "queued" in out
    assert main(["stop", "cli-run"]) == 2
    assert "not running" in capsys.readouterr().err
    assert main(["stop", "no-such-run"]) == 2


def test_cli_train_has_one_flag_per_run_config_field():
    import argparse

    from bdcore.cli import build_parser
    from bdcore.engine.config import RunConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {o for a in sub.choices["train"]._actions for o in a.option_strings}
    for name, info in RunConfig.model_fields.items():
        assert f"--{name.replace('_', '-')}" in flags, name
        if info.annotation is bool:
            assert f"--no-{name.replace('_', '-')}" in flags, name
    args = parser.parse_args(["train", "--crop-size", "none", "--steps-per-epoch", "5", "--no-amp", "--boundary",
                              "--lr", "0.01", "--split", "blocked", "--encoder-weights", "none", "--epochs", "3"])
    given = {k: getattr(args, k) for k in RunConfig.model_fields if hasattr(args, k)}
    assert given == {"crop_size": None, "steps_per_epoch": 5, "amp": False, "boundary": True, "lr": 0.01,
                     "split": "blocked", "encoder_weights": "none", "epochs": 3}  # only the flags given
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--epochs", "three"])


def test_cli_train_foreground_and_detach(tmp_path, monkeypatch, capsys, fake_trainer):
    from bdcore.cli import main

    monkeypatch.setenv("BDCORE_RUNS_DIR", str(tmp_path / "runs"))
    flags = ["--encoder", "resnet18", "--encoder-weights", "none", "--epochs", "2", "--steps-per-epoch", "3",
             "--crop-size", "none"]
    assert main(["train", "--name", "fg", *flags]) == 0  # foreground: follows the run to the end
    out = capsys.readouterr().out
    assert "fg" in out and "finished" in out and "epoch 2/2" in out
    cfg = json.loads((tmp_path / "runs" / "fg" / "config.json").read_text())
    assert cfg["crop_size"] is None and cfg["encoder_weights"] is None and cfg["steps_per_epoch"] == 3
    assert main(["train", "--name", "bg", "--detach", *flags]) == 0
    assert capsys.readouterr().out.strip() == "bg"
    assert runs.wait_run(tmp_path / "runs" / "bg", timeout=30) == "finished"
    assert main(["train", "--epochs", "0"]) == 2  # invalid config: one-line error, no run folder left behind
    assert "epochs" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")) == ["bg", "fg"]
    # --create-only: the run folder for torchrun, nothing started
    assert main(["train", "--name", "ddp", "--create-only", *flags]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "runs" / "ddp")
    info = runs.run_info(tmp_path / "runs" / "ddp")
    assert info.state == "queued" and not (tmp_path / "runs" / "ddp" / "launch.json").exists()


# ------------------------------------------------------------------------------------------- the real trainer


@pytest.mark.slow
def test_real_detached_training_run_stop_and_resume(tmp_path):
    """bdcore.engine.train as a detached process on a tiny synthetic AOI: running → stop (SIGTERM, it saves) → stopped →
    resume → finished, with checkpoints and per-epoch metrics."""
    from bdcore.engine.config import RunConfig
    from synth import make_aoi

    aoi = make_aoi(tmp_path / "aoi", n_tiles=6, size=64, seed=1)
    cfg = RunConfig(data_root=str(aoi.root), arch="Unet", encoder="resnet18", encoder_weights=None, epochs=2,
                    steps_per_epoch=3, crop_size=64, batch_size=2, workers=0, device="cpu", val_fraction=0.34,
                    building_f1_tiles=0, log_every=1)
    run_dir = runs.create_run(cfg, name="real")
    runs.launch(run_dir)
    _wait_for(lambda: read_status(run_dir).get("step", 0) >= 1 or not runs.is_alive(run_dir), timeout=180)
    listed = {i.run_id: i for i in runs.list_runs()}
    assert listed["real"].state == "running", (run_dir / "train.log").read_text()[-3000:]
    assert listed["real"].device == "cpu" and listed["real"].total_epochs == 2

    assert runs.stop_run(run_dir, timeout=120) == "stopped"
    status = read_status(run_dir)
    assert status["state"] == "stopped" and status.get("stopped_by") == "SIGTERM"
    assert (run_dir / "last.pt").exists()
    stopped_step = status["step"]

    runs.resume_run(run_dir)
    state = runs.wait_run(run_dir, timeout=300)
    log = (run_dir / "train.log").read_text()
    assert state == "finished", log[-3000:]
    assert (run_dir / "best.pt").exists()
    epochs = read_metrics(run_dir, kind="epoch")
    assert [e["epoch"] for e in epochs] == [1, 2] and "val_iou" in epochs[-1] and epochs[-1]["step"] == 6
    steps = [r["step"] for r in read_metrics(run_dir, kind="step")]
    assert steps == list(range(1, 7)) and 1 <= stopped_step < 6  # resumed exactly where it stopped
    info = runs.run_info(run_dir)
    assert info.progress == 1.0 and info.epoch == 2 and info.state == "finished"


def test_stop_verifies_a_trainer_started_outside_launch(tmp_path, fake_trainer):
    """No launch.json (torchrun, a shell): the status pid is signalled only because its command line names this run
    folder (a relative --run-dir, resolved in its cwd); a pid whose recorded start time differs is not the trainer."""
    run_dir = runs.create_run(_cfg(epochs=50), name="outside", root=tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "fake_trainer", "--run-dir", "outside"], cwd=tmp_path,
                            start_new_session=True)
    try:
        _wait_running(run_dir)
        assert runs.trainer_mismatch(run_dir, proc.pid) is None
        assert runs.stop_run(run_dir, timeout=20) == "stopped" and proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        _wait_for(lambda: runs._cmdline(other.pid))  # empty while its exec is still under way
        assert runs.trainer_mismatch(run_dir, other.pid) == "sleep 60"
        start = runs.process_start_time(other.pid)
        assert isinstance(start, int) and runs.trainer_mismatch(run_dir, other.pid, start) is None
        (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": other.pid, "pid_start": start + 1}))
        assert _state(run_dir) == "interrupted"  # the pid lives, but it is not the process that wrote the status
        with pytest.raises(RunError, match="not running"):
            runs.stop_run(run_dir)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


DIST_VARS = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
             "ROLE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x"}


def test_detached_launch_clears_process_group_variables(tmp_path, monkeypatch):
    """A container (Kubeflow) sets RANK/WORLD_SIZE/MASTER_*: the detached single-process trainer must not inherit
    them (it would wait in init_process_group for ranks that never come)."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "env_dump.py").write_text(
        "import json, os, sys\n"
        "json.dump(dict(os.environ), open(os.path.join(sys.argv[sys.argv.index('--run-dir') + 1], 'env.json'), 'w'))\n")
    monkeypatch.setenv("PYTHONPATH", str(mod_dir))
    for k, v in DIST_VARS.items():
        monkeypatch.setenv(k, v)
    run_dir = runs.create_run(_cfg(), name="env", root=tmp_path)
    runs.launch(run_dir, module="env_dump", extra_env={"BDCORE_TEST_EXTRA": "1"})
    runs.wait_run(run_dir, timeout=60)
    env = json.loads((run_dir / "env.json").read_text())
    assert not set(DIST_VARS) & set(env), sorted(set(DIST_VARS) & set(env))
    assert env["BDCORE_TEST_EXTRA"] == "1" and env["PYTHONPATH"] == str(mod_dir)  # the rest is passed on
