"""Track neural collapse in a Lightning training run with the NeuralCollapse callback.

Needs: pip install 'ncollapse[lightning]'
Run: .venv/bin/python examples/lightning_callback.py --out runs/lightning
(a minute or two on a CPU)
It logs nc/train/<metric> and nc/val/<metric> to a CSV logger (OUT/csv/.../metrics.csv) and
writes a run directory (OUT/run) for `ncollapse plot`, `animate` and `report`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from ncollapse.data import load_dataset
from ncollapse.integrations.lightning import NeuralCollapse


class DigitsNet(pl.LightningModule):
    """An MLP with BatchNorm: the callback measures in eval mode, as it must."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128),
                                  nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.classifier = nn.Linear(64, 10)  # its input are the features measured
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)  # recorded in the run dir
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lightning"))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()

    pl.seed_everything(0, verbose=False)
    train = DataLoader(load_dataset("digits", split="train", per_class=30), batch_size=32,
                       shuffle=True)
    val = DataLoader(load_dataset("digits", split="test"), batch_size=256)
    nc = NeuralCollapse(num_measurements=10, run_dir=args.out / "run",
                        config={"dataset": "digits", "per_class": 30, "epochs": args.epochs})
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, callbacks=[nc],
                         logger=CSVLogger(args.out, name="csv"), log_every_n_steps=5,
                         enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.fit(DigitsNet(), train, val)
    for epoch, result in nc.history:
        train_m, val_m = result["train"], result["val"]
        print(f"epoch {epoch:3d}: NC1 {train_m.nc1:.3g}  NC4 {train_m.ncc_mismatch:.3g}  "
              f"val accuracy {val_m.accuracy:.3f}")
    print(f"metrics: {trainer.logger.log_dir}/metrics.csv  run directory: {args.out / 'run'}")


if __name__ == "__main__":
    main()
