"""Kill a real training process with SIGKILL, resume it, and get exactly the history of an
uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tomli_w
import torch

from ncollapse.io import safe_torch_load
from ncollapse.rundir import read_jsonl

CONFIG = {
    "run": {"seed": 5, "device": "cpu"},
    "data": {"dataset": "digits", "per_class": 40},
    "model": {"model": "mlp", "width": 48, "depth": 2, "batchnorm": True},
    "optim": {"epochs": 120, "batch_size": 40, "lr": 0.05, "weight_decay": 1e-3,
              "schedule": "step"},
    "tracking": {"num_measurements": 30, "snapshot_per_class": 2, "checkpoint_every": 2},
}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ncollapse.cli", "train", *args, "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _rows(path):
    return [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(path)]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(tomli_w.dumps(CONFIG))
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    env = _env()
    ref = subprocess.Popen(_cli("--config", str(cfg), "--out", str(ref_dir)), env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(_cli("--config", str(cfg), "--out", str(run_dir)), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    epochs_file = run_dir / "epochs.jsonl"
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        if epochs_file.is_file() and len(read_jsonl(epochs_file)) >= 12:
            break
        if victim.poll() is not None:
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    status = json.loads((run_dir / "status.json").read_text())
    # logs are written before the checkpoint, so they may be an epoch or two ahead of it
    assert status["state"] == "running" and 10 <= status["epoch"] < 120
    killed_at = safe_torch_load(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert 10 <= killed_at < 120

    resumed = subprocess.run(_cli("--resume", str(run_dir)), env=env, capture_output=True,
                             text=True, timeout=250)
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(timeout=250) == 0, ref.stderr.read().decode()
    assert "state: finished" in resumed.stdout

    for name in ("metrics.jsonl", "epochs.jsonl"):
        a, b = _rows(ref_dir / name), _rows(run_dir / name)
        assert len(a) == len(b) and a == b, name
    assert (ref_dir / "metrics.csv").read_text().count("\n") == \
        (run_dir / "metrics.csv").read_text().count("\n")
    snaps = sorted(p.name for p in (ref_dir / "snapshots").glob("*.npz"))
    assert snaps == sorted(p.name for p in (run_dir / "snapshots").glob("*.npz"))
    for name in snaps:
        with np.load(ref_dir / "snapshots" / name) as x, np.load(run_dir / "snapshots" / name) as y:
            assert x.files == y.files
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key])
    ca = safe_torch_load(ref_dir / "checkpoints" / "last.pt")
    cb = safe_torch_load(run_dir / "checkpoints" / "last.pt")
    for key, val in ca["model"].items():
        assert torch.equal(val, cb["model"][key]), key
    sa = json.loads((ref_dir / "status.json").read_text())
    sb = json.loads((run_dir / "status.json").read_text())
    assert (sa["state"], sa["tpt_onset_epoch"]) == (sb["state"], sb["tpt_onset_epoch"])
