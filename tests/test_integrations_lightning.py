"""ncollapse.integrations.lightning with the real Lightning package on CPU (no mocks).

A tiny LightningModule trains 3 epochs on digits: the callback logs nc/train/<metric> and
nc/val/<metric> to a CSVLogger, its numbers are measure_model's on the same model, the module's
train/eval modes are restored, and its run directory renders with ``ncollapse report``.
A 2-process gloo DDP run gives exactly the single-process numbers of the same weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="needs the lightning extra (make setup installs it)")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from ncollapse import measure_model  # noqa: E402
from ncollapse.cli import main  # noqa: E402
from ncollapse.data import load_dataset  # noqa: E402
from ncollapse.integrations.lightning import NeuralCollapse  # noqa: E402
from ncollapse.rundir import load_run  # noqa: E402


class TinyNet(pl.LightningModule):
    """8x8 digits -> 32 -> BatchNorm -> 16 features -> 10 classes (BatchNorm: eval mode matters)."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                  nn.Linear(32, 16), nn.ReLU())
        self.fc = nn.Linear(16, 10)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))

    def training_step(self, batch, _idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    return (DataLoader(train, batch_size=batch_size, shuffle=True),
            DataLoader(test, batch_size=batch_size))


def quiet_trainer(tmp: Path, callback: NeuralCollapse, epochs: int, *, tensorboard: bool = False,
                  **kwargs) -> pl.Trainer:
    loggers = [CSVLogger(tmp, name="csv")]
    if tensorboard:
        loggers.append(TensorBoardLogger(tmp, name="tb"))
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[callback],
                      logger=loggers, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False,
                      num_sanity_val_steps=0, **kwargs)


def read_csv_metrics(trainer: pl.Trainer) -> list[dict[str, str]]:
    with open(Path(trainer.logger.log_dir) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_three_epochs_on_digits_log_metrics_and_write_a_run_that_renders(tmp_path, capsys):
    torch.manual_seed(0)
    train_loader, val_loader = loaders()
    model = TinyNet()
    nc = NeuralCollapse(epochs=[1, 2, 3], run_dir=tmp_path / "run", layers=["body.1", "body.4"],
                        config={"dataset": "digits", "model": "TinyNet", "epochs": 3})
    trainer = quiet_trainer(tmp_path, nc, 3, tensorboard=True)
    trainer.fit(model, train_loader, val_loader)

    rows = read_csv_metrics(trainer)
    logged = [r for r in rows if r.get("nc/train/nc1")]
    assert len(logged) == 3
    for r in logged:
        for key in ("nc/train/nc1", "nc/val/nc1", "nc/train/ncc_mismatch", "nc/train/accuracy",
                    "nc/val/accuracy", "nc/train/num_samples"):
            assert math.isfinite(float(r[key])), key
    assert float(logged[-1]["nc/train/num_samples"]) == len(train_loader.dataset)

    # The last logged numbers are measure_model's (eval mode) on the final weights, and the
    # model was handed back in training mode with its BatchNorm in training mode too.
    assert model.training and model.body[2].training
    ref = measure_model(model, DataLoader(train_loader.dataset, batch_size=128))
    assert model.training and model.body[2].training
    got = nc.last["train"]
    for name in ("nc1", "nc1_trace_ratio", "cdnv", "ncc_mismatch", "accuracy", "self_duality"):
        assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=1e-6, abs=1e-12), name
    assert float(logged[-1]["nc/train/nc1"]) == pytest.approx(ref.nc1, rel=1e-6)
    ref_layers = measure_model(model, DataLoader(train_loader.dataset, batch_size=128),
                               layers=["body.1", "body.4"])
    assert list(nc.layer_history[-1][1]["train"]) == ["body.1", "body.4"]
    for name, m in ref_layers.items():
        assert float(logged[-1][f"nc/train/layers/{name}/nc1"]) == pytest.approx(m.nc1, rel=1e-6)
        assert float(logged[-1][f"nc/val/layers/{name}/nc1"]) > 0

    run = load_run(tmp_path / "run")
    assert run.state == "finished" and not run.problems
    assert [m["epoch"] for m in run.metrics] == [1, 2, 3]
    assert run.metrics[-1]["train"]["nc1"] == pytest.approx(ref.nc1, rel=1e-6)
    assert run.metrics[-1]["test"]["accuracy"] == pytest.approx(nc.last["val"].accuracy)
    assert sorted(run.snapshots) == [1, 2, 3]
    assert run.metrics[-1]["layers"]["body.4"]["nc1"] == pytest.approx(
        ref_layers["body.4"].nc1, rel=1e-6)

    # The TensorBoard logger got the scalars and, at the end, the overview figure.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer.loggers[1].log_dir)
    events.Reload()
    assert len(events.Scalars("nc/train/nc1")) == 3
    assert events.Tags()["images"] == ["nc/overview"]

    report = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "run"), "--out", str(report)]) == 0
    html = report.read_text()
    assert "<img" in html or "data:image" in html
    capsys.readouterr()


def test_default_schedule_is_log_spaced_and_val_optional(tmp_path):
    torch.manual_seed(1)
    train_loader, _ = loaders(batch_size=256)
    nc = NeuralCollapse(num_measurements=3, val=False, max_batches=2)
    trainer = quiet_trainer(tmp_path, nc, 5, limit_train_batches=1)
    trainer.fit(TinyNet(), train_loader)
    assert [e for e, _ in nc.history] == [1, 2, 5]
    assert set(nc.last) == {"train"}
    rows = read_csv_metrics(trainer)
    assert not any(k.startswith("nc/val/") for k in rows[0])


# ----------------------------------------------------------------------------- DDP

WORKER = r'''
import json, os, sys
sys.path.insert(0, sys.argv[2])
import torch
import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, Subset
from test_integrations_lightning import TinyNet
from ncollapse.data import load_dataset
from ncollapse.integrations.lightning import NeuralCollapse

out = sys.argv[1]
torch.manual_seed(0)
ds = load_dataset("digits", split="train")
ds = Subset(ds, range(301))  # odd: a padding sampler would count a sample twice
val = Subset(load_dataset("digits", split="test"), range(99))
nc = NeuralCollapse(epochs=[2], run_dir=os.path.join(out, "run"))
trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, num_nodes=1,
                     strategy=DDPStrategy(process_group_backend="gloo"), precision="64-true",
                     callbacks=[nc], logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False,
                     num_sanity_val_steps=0)
model = TinyNet()
trainer.fit(model, DataLoader(ds, batch_size=32, shuffle=True), DataLoader(val, batch_size=16))
rank = trainer.global_rank
result = {split: m.to_dict() for split, m in nc.last.items()}
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump(result, fh)
if rank == 0:
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_process_gloo_ddp_gives_the_single_process_numbers(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": "2", "NODE_RANK": "0", "LOCAL_RANK": str(rank),
               "RANK": str(rank), "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=170)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]

    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert per_rank[0] == per_rank[1]  # synced: every rank has the numbers of all shards

    # The single-process measurement of the same weights on the whole data sets.
    from torch.utils.data import Subset

    model = TinyNet().double()
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    train = Subset(load_dataset("digits", split="train"), range(301))
    val = Subset(load_dataset("digits", split="test"), range(99))
    double = lambda batch: [batch[0].double(), batch[1]]  # noqa: E731 - precision="64-true"
    for split, ds in (("train", train), ("val", val)):
        loader = DataLoader(ds, batch_size=50, collate_fn=lambda b: double(
            torch.utils.data.default_collate(b)))
        ref = measure_model(model, loader).to_dict()
        got = per_rank[0][split]
        assert got["num_samples"] == len(ds)
        for name, value in ref.items():
            if value is None:
                assert got[name] is None, name
            else:
                assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), (split, name)

    run = load_run(tmp_path / "run")  # rank 0 wrote it, alone
    assert run.state == "finished"
    assert run.metrics[-1]["train"]["nc1"] == pytest.approx(per_rank[0]["train"]["nc1"])


def test_measuring_leaves_the_training_trajectory_unchanged(tmp_path):
    """The callback draws nothing from the training's random stream (shuffling, dropout)."""
    weights = []
    for callbacks in ([], [NeuralCollapse(epochs=[1, 2], max_batches=3)]):
        torch.manual_seed(3)
        train_loader, val_loader = loaders(batch_size=128)
        model = TinyNet()
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=callbacks,
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, num_sanity_val_steps=0,
                             limit_train_batches=4, limit_val_batches=1)
        trainer.fit(model, train_loader, val_loader)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
