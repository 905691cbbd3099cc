"""``ncollapse train`` under torchrun with 2 processes (gloo, CPU): the tracked metrics equal a
single-process computation on the same data with the same (final) weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tomli_w
import torch

from ncollapse import measure
from ncollapse.config import load_config
from ncollapse.data import load_dataset
from ncollapse.io import safe_torch_load
from ncollapse.models import build_model
from ncollapse.rundir import read_jsonl

CONFIG = {
    "run": {"seed": 2, "device": "cpu"},
    # 25 per class: 250 samples, an odd split of the eval shards is fine (125 / 125 here,
    # and the test split's 360 samples 180 / 180), per-rank batches of 20
    "data": {"dataset": "digits", "per_class": 25},
    "model": {"model": "mlp", "width": 24, "depth": 2, "batchnorm": True},
    "optim": {"epochs": 4, "batch_size": 40, "lr": 0.05, "weight_decay": 5e-4},
    "tracking": {"num_measurements": 4, "snapshot_per_class": 2, "eval_batch_size": 32},
}


def _close(got, ref, what):
    assert set(got) == set(ref), what
    for k, v in ref.items():
        if v is None or isinstance(v, int):
            assert got[k] == v, (what, k, got[k], v)
        else:
            assert math.isclose(got[k], v, rel_tol=1e-6, abs_tol=1e-9), (what, k, got[k], v)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_gloo_run_matches_single_process_measurement(tmp_path):
    cfg_path = tmp_path / "ddp.toml"
    cfg_path.write_text(tomli_w.dumps(CONFIG))
    out = tmp_path / "ddp-run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "ncollapse.cli", "train", "--config", str(cfg_path), "--out", str(out),
           "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("run dir:") == 1  # only rank 0 reports
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished"

    cfg = load_config(path=out / "config.toml")
    ckpt = safe_torch_load(out / "checkpoints" / "last.pt")
    tr = load_dataset("digits", split="train", per_class=cfg.per_class, seed=cfg.seed)
    te = load_dataset("digits", split="test", seed=cfg.seed)
    model = build_model("mlp", input_shape=tr.input_shape, num_classes=10, width=cfg.width,
                        depth=cfg.depth, batchnorm=True)
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        h_tr, h_te = model.features(tr.inputs), model.features(te.inputs)
        z_tr, z_te = model.classifier(h_tr), model.classifier(h_te)
    w, b = model.classifier.weight.detach(), model.classifier.bias.detach()
    ref_tr = measure(h_tr, tr.targets, weight=w, bias=b, logits=z_tr).to_dict()
    means = torch.stack([h_tr.double()[tr.targets == c].mean(0) for c in range(10)])
    ref_te = measure(h_te, te.targets, weight=w, bias=b, logits=z_te, ncc_means=means).to_dict()

    row = read_jsonl(out / "metrics.jsonl")[-1]
    assert row["epoch"] == cfg.epochs
    _close(row["train"], ref_tr, "train")
    _close(row["test"], ref_te, "test")
    loss = torch.nn.functional.cross_entropy(z_tr.double(), tr.targets).item()
    assert math.isclose(row["train_loss"], loss, rel_tol=1e-6)
    assert row["train_error"] == float((z_tr.argmax(1) != tr.targets).double().mean())
    assert row["test_accuracy"] == float((z_te.argmax(1) == te.targets).double().mean())
    with np.load(out / "snapshots" / f"epoch_{cfg.epochs:05d}.npz") as z:
        np.testing.assert_allclose(z["means"], means.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(z["global_mean"], h_tr.double().mean(0).numpy(), rtol=1e-6,
                                   atol=1e-7)
