"""Issue 13: run directories that cannot be corrupted, and one-line errors. Each test
reproduces a failure found by attacking the code (and fails on the code before the fix)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ncollapse.cli import main as cli_main
from ncollapse.config import load_config, save_config
from ncollapse.demo import run_demo
from ncollapse.io import safe_torch_load
from ncollapse.rundir import load_run, read_jsonl
from ncollapse.training import TrainingDiverged, train

TINY = {"dataset": "digits", "per_class": 20, "model": "mlp", "width": 16, "depth": 2,
        "epochs": 6, "batch_size": 50, "lr": 0.05, "num_measurements": 3,
        "snapshot_per_class": 2, "device": "cpu", "seed": 0, "checkpoint_every": 2}


def tiny(**over):
    return load_config(overrides={**TINY, **over})


def _flags(**over) -> list[str]:
    cfg = {**TINY, **over}
    out = []
    for key, value in cfg.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ncollapse.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- 1. locking


@pytest.mark.timeout(300)
def test_second_process_is_refused_while_a_run_is_written_then_sigterm_stops_it(tmp_path):
    """Two real processes race for one --out: the second fails at once naming the first;
    SIGTERM then stops the first like Ctrl-C (status failed, not stuck "running")."""
    out = tmp_path / "R"
    env = _env()
    first = subprocess.Popen(
        _cli("train", *_flags(epochs=100000, num_measurements=2, checkpoint_every=5),
             "--out", str(out), "--no-progress"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and not (out / "epochs.jsonl").is_file():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        second = subprocess.run(
            _cli("train", *_flags(epochs=10, lr=0.2), "--out", str(out), "--no-progress"),
            env=env, capture_output=True, text=True, timeout=200)
        assert first.poll() is None  # refused while the first is still running
        assert second.returncode == 1
        line = _one_line(second.stderr)
        assert f"is in use by process {first.pid}" in line and "train" in line
        assert "--lr 0.2" not in (out / "config.toml").read_text()
        # the same for a resume of the run being written
        resumed = subprocess.run(_cli("train", "--resume", str(out), "--no-progress"), env=env,
                                 capture_output=True, text=True, timeout=200)
        assert resumed.returncode == 1
        assert f"in use by process {first.pid}" in _one_line(resumed.stderr)
    finally:
        first.send_signal(signal.SIGTERM)
        rc = first.wait(timeout=120)
    assert rc == 130, first.stderr.read()
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "SIGTERM" in status["message"]
    assert load_config(path=out / "config.toml").lr == TINY["lr"]
    rows = read_jsonl(out / "metrics.jsonl")
    assert all(r["lr"] <= TINY["lr"] for r in rows)


@pytest.mark.timeout(300)
def test_two_trainings_started_together_never_mix(tmp_path):
    """The reproduction of issue 13 point 1: two `train` into one --out at the same moment.
    Exactly one wins; the directory holds its config, its history and only its snapshots."""
    out = tmp_path / "R"
    env = _env()
    variants = {"a": {"epochs": 12, "lr": 0.05}, "b": {"epochs": 6, "lr": 0.2}}
    procs = {k: subprocess.Popen(_cli("train", *_flags(**v), "--out", str(out), "--no-progress"),
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
             for k, v in variants.items()}
    codes = {k: p.wait(timeout=250) for k, p in procs.items()}
    errors = {k: p.stderr.read() for k, p in procs.items()}
    assert sorted(codes.values())[0] == 0 and sorted(codes.values())[1] != 0, (codes, errors)
    winner = next(k for k, c in codes.items() if c == 0)
    loser = next(k for k in codes if k != winner)
    line = _one_line(errors[loser])
    assert "in use by process" in line or "already holds a run" in line or "not empty" in line
    run = load_run(out)
    want = variants[winner]
    assert run.state == "finished" and run.last_epoch == run.total_epochs == want["epochs"]
    optim = run.config["optim"]
    assert optim["lr"] == want["lr"] and optim["epochs"] == want["epochs"]
    assert [r["epoch"] for r in run.epochs] == list(range(1, want["epochs"] + 1))
    assert max(run.snapshots) == want["epochs"] and set(run.snapshots) == {
        r["epoch"] for r in run.metrics}
    assert safe_torch_load(out / "checkpoints" / "last.pt")["epoch"] == want["epochs"]


@pytest.mark.timeout(300)
def test_lock_of_a_killed_process_is_stale_and_taken_over(tmp_path):
    out = tmp_path / "R"
    victim = subprocess.Popen(
        _cli("train", *_flags(epochs=100000, checkpoint_every=2), "--out", str(out),
             "--no-progress"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and not (out / "checkpoints" / "last.pt").is_file():
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert str(victim.pid) in (out / ".lock").read_text()  # left behind by the dead process
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    # the dead process's lock does not block: the run is resumed to a shorter, explicit end
    ckpt = safe_torch_load(out / "checkpoints" / "last.pt")["epoch"]
    train(out=out, resume=True, epochs=ckpt + 2, progress=False)
    run = load_run(out)
    assert run.state == "finished" and run.last_epoch == run.total_epochs == ckpt + 2


def test_lock_is_released_on_every_exit(tmp_path, monkeypatch):
    import ncollapse.training.loop as loop

    out = tmp_path / "r"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "evaluate", boom)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), out=out, progress=False)
    monkeypatch.undo()
    assert load_run(out).state == "failed"
    train(out=out, resume=True, progress=False)  # not locked out by the interrupted run
    assert load_run(out).state == "finished"


def test_a_refusal_names_a_holder_that_has_not_written_its_record_yet(tmp_path):
    """The race of two runs started together: the winner holds the lock but its record is still
    empty when the loser looks. The loser waits for the record and names the winner's pid."""
    import fcntl
    import threading

    from ncollapse.rundir.lock import RunLock, RunLocked

    (tmp_path / ".lock").write_text("")
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, record empty
    record = json.dumps({"pid": 424242, "host": "h"}) + "\n"
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, record.encode(), 0))
    writer.start()
    try:
        with pytest.raises(RunLocked, match="in use by process 424242 on h"):
            RunLock(tmp_path).acquire()
        os.ftruncate(fd, 0)  # a holder that never writes a record is "another process"
        with pytest.raises(RunLocked, match="in use by another process"):
            RunLock(tmp_path).acquire()
    finally:
        writer.join()
        os.close(fd)


# ----------------------------------------------------------------------------- 5. user files


def test_train_refuses_a_folder_with_user_files_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "snapshots").mkdir(parents=True)
    (out / "figures").mkdir()
    (out / "metrics.csv").write_text("my numbers")
    (out / "snapshots" / "epoch_00001.npz").write_bytes(b"mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli_main(["train", *_flags(), "--out", str(out), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not empty and not a run directory" in line and "choose a new or empty" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["figures", "metrics.csv", "snapshots"]


def test_train_into_an_existing_run_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    train(tiny(epochs=2), out=out, progress=False)
    before = (out / "metrics.jsonl").read_bytes()
    assert cli_main(["train", *_flags(lr=0.2), "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run; continue it with --resume" in _one_line(capsys.readouterr().err)
    assert (out / "metrics.jsonl").read_bytes() == before


def test_demo_fresh_deletes_only_what_a_run_wrote(tmp_path):
    out = tmp_path / "D"
    (out / "run").mkdir(parents=True)
    (out / "run" / "config.toml").write_text("[optim]\nlr = 1\n")  # a user's file, not ours
    (out / "run" / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="not a run directory; refusing to delete"):
        run_demo(out, fresh=True, progress=False, echo=lambda _: None)
    assert (out / "run" / "thesis.tex").read_text() == "years of work"

    shutil.rmtree(out / "run")
    train(tiny(epochs=2), out=out / "run", progress=False)
    (out / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"files the run did not write \(notes.txt\)"):
        run_demo(out, fresh=True, progress=False, echo=lambda _: None)
    assert (out / "run" / "notes.txt").read_text() == "mine"
    assert (out / "run" / "metrics.jsonl").is_file()


def test_demo_fresh_never_follows_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    train(tiny(epochs=2), out=elsewhere, progress=False)
    out = tmp_path / "D"
    out.mkdir()
    (out / "run").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="symbolic link; refusing to delete"):
        run_demo(out, fresh=True, progress=False, echo=lambda _: None)
    assert (elsewhere / "metrics.jsonl").is_file() and (out / "run").is_symlink()
    # a symlink inside a run is foreign too: nothing behind it is deleted
    (out / "run").unlink()
    train(tiny(epochs=2), out=out / "run", progress=False)
    (out / "run" / "snapshots" / "link").symlink_to(elsewhere)
    with pytest.raises(ValueError, match="snapshots/link"):
        run_demo(out, fresh=True, progress=False, echo=lambda _: None)
    assert (elsewhere / "metrics.jsonl").is_file()


# ----------------------------------------------------------------------------- 4. resume


def _edit_config(out: Path, **changes) -> None:
    save_config(load_config(path=out / "config.toml", overrides=changes), out / "config.toml")


def test_resume_refuses_an_edited_config_naming_the_keys(tmp_path):
    out = tmp_path / "r"
    train(tiny(epochs=4), out=out, progress=False)
    json_status = (out / "status.json").read_text()
    _edit_config(out, epochs=6, lr=0.2, width=24)
    with pytest.raises(ValueError, match=r"differs from the one its checkpoint was trained with "
                                         r"in epochs \(4 -> 6\), lr \(0.05 -> 0.2\), width"):
        train(out=out, resume=True, progress=False)
    assert (out / "status.json").read_text() == json_status  # a refused resume changes nothing


def test_resume_epoch_count_changes_only_with_the_flag(tmp_path, capsys):
    out = tmp_path / "r"
    train(tiny(epochs=4), out=out, progress=False)
    _edit_config(out, epochs=3)  # below the checkpoint epoch: was "finished 3/3" with 4 rows
    assert cli_main(["train", "--resume", str(out), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "epochs (4 -> 3)" in line and "resume with --epochs N" in line
    _edit_config(out, epochs=4)
    assert cli_main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 2
    assert "its checkpoint is at epoch 4 already" in _one_line(capsys.readouterr().err)
    assert cli_main(["train", "--resume", str(out), "--epochs", "6", "--no-progress"]) == 0
    run = load_run(out)
    assert run.state == "finished" and run.total_epochs == 6 and run.config["optim"]["epochs"] == 6
    assert [r["epoch"] for r in run.epochs] == [1, 2, 3, 4, 5, 6]


def test_resume_with_another_model_is_a_clear_error(tmp_path, monkeypatch):
    out = tmp_path / "r"
    train(tiny(epochs=2), out=out, progress=False)
    ckpt = safe_torch_load(out / "checkpoints" / "last.pt")
    del ckpt["config_hash"]  # a checkpoint from before the hash: the model check still holds
    torch.save(ckpt, out / "checkpoints" / "last.pt")
    _edit_config(out, width=24, epochs=3)
    with pytest.raises(ValueError, match="does not fit the model of config.toml"):
        train(out=out, resume=True, progress=False)


def test_corrupt_checkpoint_message_says_what_to_do(tmp_path):
    out = tmp_path / "r"
    train(tiny(epochs=2), out=out, progress=False)
    _edit_config(out, epochs=3)
    (out / "checkpoints" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="damaged or not a checkpoint") as info:
        train(out=out, resume=True, epochs=3, progress=False)
    assert "re-save" not in str(info.value) and "delete checkpoints/" in str(info.value)


# ----------------------------------------------------------------------------- 8. messages


def test_divergence_without_a_checkpoint_does_not_claim_one(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(TrainingDiverged) as info:
        train(tiny(lr=1e6, checkpoint_every=0), out=out, progress=False)
    message = str(info.value)
    assert "no checkpoint had been written yet" in message
    assert "last good checkpoint" not in message
    assert not (out / "checkpoints" / "last.pt").exists()
    assert json.loads((out / "status.json").read_text())["message"] == message


# ----------------------------------------------------------------------------- 7. full disk


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "400k"):
        pytest.skip("needs root and a mountable tmpfs for a small full filesystem")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.timeout(300)
def test_full_disk_one_line_and_history_consistent(small_disk, capsys):
    out = small_disk / "run"
    argv = ["train", *_flags(epochs=40, num_measurements=40, snapshot_per_class=60, width=64,
                             checkpoint_every=1000), "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 1
    line = _one_line(capsys.readouterr().err)
    assert "No space left on device" in line
    run = load_run(out)
    assert run.state == "failed" and "No space left" in run.status["message"]
    measured = [r["epoch"] for r in run.metrics]
    assert measured, "some measurements fitted before the disk was full"
    assert measured == sorted(run.snapshots)  # a row only for a snapshot that is on disk
    assert not [p for p in (out / "snapshots").iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- 7. OS errors


def test_os_errors_are_one_line_with_the_path(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "run"
    assert cli_main(["train", *_flags(), "--out", str(target), "--no-progress"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("ncollapse train: error: ") and "Not a directory" in line
    assert str(tmp_path / "file") in line
    assert cli_main(["train", *_flags(), "--out", str(tmp_path / "file"), "--no-progress"]) == 2
    assert "exists and is not a directory" in _one_line(capsys.readouterr().err)


@pytest.mark.timeout(300)
def test_read_only_output_folder_is_one_line_for_every_writer(small_disk, tmp_path, capsys):
    from conftest import write_run

    run_dir = write_run(tmp_path / "run", epochs=4, measurements=2, per_class=4).path
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for argv in (["train", *_flags(), "--out", str(small_disk / "run"), "--no-progress"],
                 ["plot", str(run_dir), "--out", str(small_disk / "figs"), "--format", "png"],
                 ["report", str(run_dir), "--out", str(small_disk / "r.html")]):
        assert cli_main(argv) == 1, argv
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"ncollapse {argv[0]}: error: Read-only file system: "), line


# ----------------------------------------------------------------------------- 2. degenerate


class _Dead(torch.nn.Module):
    """Every feature the same constant, as after the ReLUs died: the class means coincide."""

    def forward(self, x):
        return x * 0 + 1


def test_coinciding_class_means_do_not_stop_training(tmp_path, monkeypatch):
    """Dead ReLUs (every feature 0) used to stop the run with a false "features overflow"
    error; the measurement is now recorded as undefined (null) and the run goes on."""
    import warnings

    import ncollapse.training.loop as loop
    from ncollapse.training import measurement_epochs

    real = loop.build_model

    def dead_model(*args, **kwargs):
        model = real(*args, **kwargs)
        model.body = torch.nn.Sequential(model.body, _Dead())
        return model

    monkeypatch.setattr(loop, "build_model", dead_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny(epochs=3, num_measurements=2), out=tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    assert run.state == "finished" and run.status["message"] is None
    assert [r["epoch"] for r in run.metrics] == measurement_epochs(3, 2)
    assert all(r["train"]["nc1"] is None for r in run.metrics)  # undefined: written as null
    assert all(r["train"]["num_samples"] == 200 for r in run.metrics)
    assert not any("overflow" in str(w.message) for w in caught)


def test_a_measurement_the_metrics_cannot_define_is_null_with_a_warning(tmp_path, monkeypatch):
    """Whatever geometry the metrics refuse on finite features, training records the
    measurement as undefined, says why, and goes on (the snapshot keeps its class means)."""
    from ncollapse import NCAccumulator

    def refuses(*args, **kwargs):
        raise ValueError("class means coincide")

    monkeypatch.setattr(NCAccumulator, "compute", refuses)
    with pytest.warns(UserWarning, match=r"NC metrics not defined at this measurement \(class "
                                         r"means coincide\); recorded as null"):
        train(tiny(epochs=2, num_measurements=2, measure_test=False), out=tmp_path / "r",
              progress=False)
    run = load_run(tmp_path / "r")
    assert run.state == "finished" and [r["train"]["nc1"] for r in run.metrics] == [None, None]
    from ncollapse.rundir.reader import load_snapshot

    means = load_snapshot(run.snapshots[max(run.snapshots)])["means"]
    assert means.shape == (10, 16) and bool((abs(means).sum(1) > 0).all())


def test_measure_of_coinciding_means_is_a_result_with_one_warning():
    import warnings

    import numpy as np

    from ncollapse import measure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = measure(np.ones((20, 4), np.float32), np.repeat([0, 1], 10))
    assert m.nc1 is None or not np.isfinite(m.nc1)
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1 and "mean" in texts[0] and "overflow" not in texts[0], texts


def test_a_model_too_large_for_memory_is_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli_main(["train", *_flags(width=10**9), "--out", str(out), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "width 1000000000" in line and "does not fit in memory" in line
    assert load_run(out).state == "failed"  # the claimed directory says what happened
