"""Neural-collapse scalars in TensorBoard from a plain loop, live, and the overview figure.

Needs: pip install 'ncollapse[tensorboard]'
Run: .venv/bin/python examples/tensorboard_logging.py --out runs/tb   (a minute or two on a CPU)
then: tensorboard --logdir runs/tb/tensorboard
(`ncollapse train --tensorboard DIR` does the same for `ncollapse train`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ncollapse import RunWriter, measure_model
from ncollapse.data import load_dataset
from ncollapse.integrations.tensorboard import TensorBoardLogger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tensorboard"))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()

    torch.manual_seed(0)
    train_set = load_dataset("digits", split="train", per_class=30)
    loader = DataLoader(train_set, batch_size=32, shuffle=True)
    in_order = DataLoader(train_set, batch_size=512)  # for measuring
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)

    with TensorBoardLogger(args.out / "tensorboard") as tb, \
            RunWriter(args.out / "run", {"dataset": "digits", "epochs": args.epochs}) as run:
        for epoch in range(1, args.epochs + 1):
            model.train()
            for x, y in loader:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            m = measure_model(model, in_order)
            tb.log_measurement(epoch, train=m)  # nc/train/nc1, nc/train/cdnv, ... at this epoch
            run.log_measurement(epoch, train=m, train_error=1 - m.accuracy)
        run.flush()
        tb.log_overview(run.path)  # the overview figure of `ncollapse plot` as an image
    print(f"final NC1 {m.nc1:.3g}; tensorboard --logdir {args.out / 'tensorboard'}")


if __name__ == "__main__":
    main()
