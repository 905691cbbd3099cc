"""Measure neural collapse of a small torch model on synthetic data, straight from a DataLoader.

Run: .venv/bin/python examples/measure_model.py   (well under a minute on a CPU)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ncollapse.collect import measure_model


def main() -> None:
    torch.manual_seed(0)
    classes, dim, per_class = 4, 10, 50
    centres = 3 * torch.randn(classes, dim)
    labels = torch.arange(classes).repeat_interleave(per_class)
    inputs = centres[labels] + torch.randn(len(labels), dim)
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=64, shuffle=True)

    model = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    for step in range(401):
        if step in (0, 10, 50, 100, 200, 400):
            # Features = input of the last nn.Linear (the default); W, b = its parameters.
            m = measure_model(model, loader)
            print(f"step {step:3d}: nc1 {m.nc1:.4g}  equinorm {m.equinorm_means:.3g}  "
                  f"maxangle {m.maxangle_means:.3g}  self-duality {m.self_duality:.3g}  "
                  f"NCC mismatch {m.ncc_mismatch:.3g}  accuracy {m.accuracy:.3f}")
        model.train()
        opt.zero_grad()  # full-batch gradient descent: the data set is tiny
        nn.functional.cross_entropy(model(inputs), labels).backward()
        opt.step()
    print()
    print("All metrics at the end:")
    for key, value in measure_model(model, loader).to_dict().items():
        print(f"  {key:24s} {value}")


if __name__ == "__main__":
    main()
