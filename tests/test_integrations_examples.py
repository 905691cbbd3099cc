"""The examples of docs/integrations.md run as a user runs them (a fresh Python process, short
settings), and what they write is what the docs promise: a run directory that ``ncollapse
plot`` and ``report`` render, logger files holding the nc/... metrics."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ncollapse.cli import main
from ncollapse.rundir import load_run
from ncollapse.training import measurement_epochs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.slow  # each example starts a fresh Python process


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def check_run(path: Path, epochs: list[int], *, snapshots: bool = True) -> None:
    run = load_run(path)
    assert run.state == "finished"
    assert not run.problems if snapshots else not run.snapshots, run.problems
    assert [m["epoch"] for m in run.metrics] == epochs
    assert all(m["train"]["nc1"] is not None for m in run.metrics)


def test_plain_loop_run_renders_with_plot_and_report(tmp_path, capsys):
    out = tmp_path / "plain"
    text = run_example("plain_loop.py", "--out", str(out), "--epochs", "6", "--per-class", "10")
    assert f"run directory: {out}" in text
    epochs = measurement_epochs(6, 12)  # the example's schedule
    check_run(out, epochs)
    assert sorted(load_run(out).snapshots) == epochs
    assert main(["plot", str(out), "--format", "png"]) == 0
    assert (out / "figures" / "overview.png").stat().st_size > 10_000
    gif = tmp_path / "animation.gif"
    assert main(["animate", str(out), "--out", str(gif), "--no-mp4"]) == 0
    assert gif.read_bytes()[:6] in (b"GIF87a", b"GIF89a")
    assert main(["report", str(out), "--out", str(tmp_path / "report.html")]) == 0
    assert (tmp_path / "report.html").stat().st_size > 10_000
    capsys.readouterr()


def test_lightning_example(tmp_path):
    pytest.importorskip("lightning")
    out = tmp_path / "lightning"
    run_example("lightning_callback.py", "--out", str(out), "--epochs", "3")
    check_run(out / "run", [1, 2, 3])
    (metrics_csv,) = (out / "csv").rglob("metrics.csv")
    with open(metrics_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("nc/train/nc1")]
    assert len(rows) == 3 and all(r["nc/val/nc1"] for r in rows)


def test_hugging_face_example(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    text = run_example("hf_trainer.py", "--out", str(out), "--epochs", "2")
    assert text.count("NC1") == 2
    check_run(out / "run", [1, 2])


def test_tensorboard_example(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    run_example("tensorboard_logging.py", "--out", str(out), "--epochs", "3")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("nc/train/nc1")] == [1, 2, 3]
    assert events.Tags()["images"] == ["nc/overview"]
    check_run(out / "run", [1, 2, 3], snapshots=False)
