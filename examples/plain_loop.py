"""A plain training loop (nanoGPT style) that writes a run directory with ncollapse.RunWriter,
so that `ncollapse plot`, `animate` and `report` work on it as on `ncollapse train`'s runs.

Run: .venv/bin/python examples/plain_loop.py --out runs/plain   (a minute or two on a CPU)
then: .venv/bin/ncollapse report runs/plain
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ncollapse import RunWriter, collect_features, measure_model
from ncollapse.data import load_dataset
from ncollapse.training import measurement_epochs


def make_model() -> nn.Module:
    """8x8 digits -> two hidden layers with BatchNorm -> 10 classes; the last Linear is the
    classifier (measure_model finds it: the Linear whose output is the model's output)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(),
                         nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/plain-loop"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=30, help="training samples per class")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_set = load_dataset("digits", split="train", per_class=args.per_class)
    test_set = load_dataset("digits", split="test")
    train_loader = DataLoader(train_set, batch_size=32, shuffle=True)
    # Measurement loaders: in order, no shuffling; a fixed subset for the animation.
    train_eval = DataLoader(train_set, batch_size=512)
    test_eval = DataLoader(test_set, batch_size=512)
    snapshot_loader = DataLoader(Subset(train_set, range(min(200, len(train_set)))),
                                 batch_size=200)

    model = make_model()
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-3)
    measure_at = set(measurement_epochs(args.epochs, 12))  # log-spaced, as in the paper
    config = {"dataset": "digits", "per_class": args.per_class, "model": "mlp 256-256 batchnorm",
              "optimizer": "sgd", "lr": lr, "schedule": "step", "momentum": 0.9,
              "weight_decay": 5e-3,
              "epochs": args.epochs, "batch_size": 32, "seed": 0}

    with RunWriter(args.out, config, epochs=args.epochs) as run:
        for epoch in range(1, args.epochs + 1):
            lr_now = lr * 0.1 ** sum(epoch > args.epochs * f for f in (1 / 3, 2 / 3))  # step
            for group in opt.param_groups:
                group["lr"] = lr_now
            model.train()
            total, wrong, loss_sum = 0, 0, 0.0
            for x, y in train_loader:
                logits = model(x)  # features -> classifier
                loss = nn.functional.cross_entropy(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += loss.item() * len(y)
                wrong += int((logits.argmax(1) != y).sum())
                total += len(y)
            train_loss, train_error = loss_sum / total, wrong / total
            run.log_epoch(epoch, lr=lr_now, train_loss=train_loss, train_error=train_error)
            if epoch in measure_at:
                # measure_model runs the model in eval mode and restores the training mode.
                train_m = measure_model(model, train_eval)
                test_m = measure_model(model, test_eval)
                snap = collect_features(model, snapshot_loader)
                run.log_measurement(
                    epoch, train=train_m, test=test_m, lr=lr_now, train_loss=train_loss,
                    train_error=train_error, test_accuracy=test_m.accuracy,
                    snapshot={"features": snap.features, "labels": snap.labels,
                              "weight": snap.weight, "bias": snap.bias, "num_classes": 10})
                print(f"epoch {epoch:3d}: train error {train_error:.3f}  NC1 {train_m.nc1:.3g}  "
                      f"NC4 {train_m.ncc_mismatch:.3g}  test accuracy {test_m.accuracy:.3f}")
    print(f"run directory: {args.out}  (try: ncollapse report {args.out})")


if __name__ == "__main__":
    main()
