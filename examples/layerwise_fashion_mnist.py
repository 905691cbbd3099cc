"""Collapse through depth on real data: a small CNN on Fashion-MNIST, measured layer by layer.

Trains a four-stage CNN on a balanced Fashion-MNIST subset into the terminal phase (zero
training error), measures NC1 at every stage with one ``measure_model(..., layers=...)`` call
per measurement epoch (conv maps average-pooled over space), then prints NC1 per layer, the
ratios between consecutive layers (constant ratios < 1 = geometric decay with depth), test-set
NC4 against the training means, per-class statistics of the last layer, and draws the figure.

Run: .venv/bin/python examples/layerwise_fashion_mnist.py      (about 10 minutes on 2 CPU cores)
Data: /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist, installed by
``make setup``), or --root DIR with the four IDX files, or --download.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ncollapse.collect import measure_model, training_means
from ncollapse.data import load_dataset
from ncollapse.io import atomic_write_bytes
from ncollapse.plots import depth_figure, figure_bytes
from ncollapse.plots.depth import depth_ratios, depth_records

LAYERS = ["block*", "hidden"]  # glob patterns: block1..block3 and the classifier's input


def small_cnn(width: int = 16, classes: int = 10) -> nn.Sequential:
    def block(c_in: int, c_out: int, pool: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU(), pool)

    w = width
    return nn.Sequential(OrderedDict([
        ("block1", block(1, w, nn.MaxPool2d(2))),           # 28 -> 14
        ("block2", block(w, 2 * w, nn.MaxPool2d(2))),       # 14 -> 7
        ("block3", block(2 * w, 4 * w, nn.Identity())),     # 7 x 7
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())),
        ("hidden", nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU())),
        ("fc", nn.Linear(4 * w, classes)),
    ]))


def log_epochs(last: int, count: int) -> list[int]:
    return sorted({0, *np.unique(np.round(np.geomspace(1, last, count)).astype(int)).tolist()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=200, help="training samples per class")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--width", type=int, default=32, help="channels of the first block")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (/10 at 1/2, 3/4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default=None, help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--download", action="store_true")
    p.add_argument("--out", type=Path, default=Path("docs/figures/layerwise-fashion-mnist.png"))
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    kw = {"root": args.root, "download": args.download, "seed": args.seed}
    train = load_dataset("fashion-mnist", split="train", per_class=args.per_class, **kw)
    test = load_dataset("fashion-mnist", split="test", per_class=100, **kw)
    train_loader = DataLoader(train, batch_size=128, shuffle=True,
                              generator=torch.Generator().manual_seed(args.seed))
    measure_loader = DataLoader(train, batch_size=500)  # fixed order for the measurements
    test_loader = DataLoader(test, batch_size=500)
    model = small_cnn(args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, [args.epochs // 2, 3 * args.epochs // 4], gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()

    records: dict[int, dict[str, object]] = {}
    start = time.perf_counter()
    for epoch in range(args.epochs + 1):
        if epoch in log_epochs(args.epochs, 8):
            # one call, all layers: conv maps averaged over space; eval mode inside
            by_layer = measure_model(model, measure_loader, layers=LAYERS, pool="avg")
            records[epoch] = {n: m.to_dict() for n, m in by_layer.items()}
            last = by_layer["hidden"]
            print(f"epoch {epoch:3d}  train error {1 - last.accuracy:.4f}  NC1 per layer: "
                  + "  ".join(f"{n} {m.nc1:.3g}" for n, m in by_layer.items())
                  + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
        if epoch == args.epochs:
            break
        model.train()
        for x, y in train_loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        sched.step()

    names, epochs, nc1 = depth_records(records)
    final = nc1[-1]
    ratios = depth_ratios(final)
    slope, intercept = np.polyfit(np.arange(len(final)), np.log10(final), 1)
    fit = slope * np.arange(len(final)) + intercept
    r2 = 1 - np.sum((np.log10(final) - fit) ** 2) / np.sum(
        (np.log10(final) - np.log10(final).mean()) ** 2)
    print("\nfinal NC1 per layer:", dict(zip(names, final.round(4).tolist(), strict=True)))
    print("ratios NC1(l+1)/NC1(l):", ratios.round(3).tolist())
    print(f"log10 NC1 against depth: slope {slope:.3f} per layer (x{10**slope:.3f}), "
          f"R^2 of a straight line {r2:.3f}")

    # test-set NC4 against the training means, every layer, in two calls
    means = training_means(model, measure_loader, layers=LAYERS, pool="avg")
    on_test = measure_model(model, test_loader, layers=LAYERS, pool="avg", ncc_means=means,
                            per_class=True)
    print("\ntest set, nearest training-mean error per layer:",
          {n: round(m.ncc_error, 4) for n, m in on_test.items()})
    pc = on_test["hidden"].per_class
    print("test set, last layer per class: within-class variance",
          pc.within_variance.numpy().round(3).tolist(),
          "\n  cos(w_c, mu_c - mu_G)", pc.weight_mean_cosine.numpy().round(3).tolist())

    fig = depth_figure(records, title=f"Fashion-MNIST ({args.per_class}/class), small CNN: "
                                      "NC1 through depth")
    atomic_write_bytes(args.out, figure_bytes(fig, "png"))
    print(f"\nwrote {args.out}")
    if args.json:
        summary = {"layers": names, "epochs": epochs.tolist(), "nc1": nc1.tolist(),
                   "final_ratios": ratios.tolist(), "slope_log10": slope, "r2": r2,
                   "test_ncc_error": {n: m.ncc_error for n, m in on_test.items()},
                   "train_error_final": 1 - records[int(epochs[-1])]["hidden"]["accuracy"],
                   "minutes": (time.perf_counter() - start) / 60}
        args.json.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    assert all(math.isfinite(v) for v in final)


if __name__ == "__main__":
    main()
