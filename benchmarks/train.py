"""Wall time of a demo-like training run three ways, in one process:

1. ``train()`` with tracking (measurements at ~50 log-spaced epochs on train and test,
   snapshots, per-epoch training error, checkpoints and logs),
2. ``train()`` without tracking (no measurements, snapshots or per-epoch error; still the
   run directory, logs and checkpoints),
3. a minimal hand-written loop: same data, model, optimizer, schedule and batch order, no files.

Prints the times and the ratios: tracking overhead = (1)/(2) − 1 (target ≤ 10%), framework
overhead = (2)/(3) − 1 (target ≤ 5%). Each variant runs ``--repeats`` times, interleaved, and
the fastest is kept (on a shared machine the minimum is the least disturbed run); the ratios
of the medians are printed too, as a check on the noise. Both wall time and the process's CPU
time (all its threads) are reported; with one thread the CPU time is the steadier measure when
other jobs compete for the cores.

    python benchmarks/train.py            # the demo preset (300 epochs)
    python benchmarks/train.py --quick    # a few epochs, for a smoke test
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ncollapse.config import TrainConfig, load_config
from ncollapse.data import load_dataset
from ncollapse.losses import build_loss
from ncollapse.models import build_model
from ncollapse.rundir import load_run
from ncollapse.training import lr_at, train


def hand_loop(cfg: TrainConfig) -> float:
    """The same training as ``train()``, written out by hand; returns the final epoch loss."""
    ds = load_dataset(cfg.dataset, split="train", per_class=cfg.per_class, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes,
                        width=cfg.width, depth=cfg.depth, batchnorm=cfg.batchnorm,
                        seed=cfg.seed)
    loss_fn = build_loss(cfg.loss, num_classes=ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    x, y = ds.inputs, ds.targets
    gen = torch.Generator()
    total = 0.0
    for epoch in range(1, cfg.epochs + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, epoch)
        model.train()
        gen.manual_seed(cfg.seed + epoch)
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            b = order[i:i + cfg.batch_size]
            loss = loss_fn(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        if not math.isfinite(total):
            raise RuntimeError("diverged")
    return total / len(y)


def run_variants(tracked: TrainConfig, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Time the three variants ``repeats`` times, interleaved; also return each variant's final
    training loss (``train()`` read from its run directory, the hand loop as it returns it)."""
    bare = tracked.replace(num_measurements=0, snapshot_per_class=0, measure_test=False,
                           track_train_error=False)
    tmp = Path(tempfile.mkdtemp(prefix="ncollapse-bench-"))
    times: dict[str, list[float]] = {"tracked": [], "untracked": [], "hand": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    loss: dict[str, list[float]] = {k: [] for k in times}
    try:
        hand_loop(bare.replace(epochs=1))  # warm-up: imports, first-call allocations
        for r in range(repeats):
            for name in times:
                t0, c0 = time.perf_counter(), time.process_time()
                if name == "hand":
                    final = hand_loop(bare)
                else:
                    cfg = tracked if name == "tracked" else bare
                    train(cfg, out=tmp / f"{name}-{r}", progress=False)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                if name != "hand":
                    final = load_run(tmp / f"{name}-{r}").epochs[-1]["train_loss"]
                loss[name].append(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"wall": times, "cpu": cpu, "final_loss": loss}


def overheads(table: dict[str, list[float]]) -> dict[str, float]:
    """Tracking and framework overhead of the fastest runs, and of the medians."""
    best = {k: min(v) for k, v in table.items()}
    med = {k: statistics.median(v) for k, v in table.items()}
    return {"tracking": best["tracked"] / best["untracked"] - 1,
            "framework": best["untracked"] / best["hand"] - 1,
            "tracking_median": med["tracked"] / med["untracked"] - 1,
            "framework_median": med["untracked"] / med["hand"] - 1}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise)")
    p.add_argument("--quick", action="store_true", help="5 epochs, 1 repeat (smoke test)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    over: dict[str, object] = {"device": "cpu"}
    if args.quick:
        over.update(epochs=5, per_class=30)
        args.repeats = 1
    elif args.epochs:
        over["epochs"] = args.epochs
    tracked = load_config(args.preset, overrides=over)
    print(f"preset {args.preset}: {tracked.dataset}, {tracked.model} width {tracked.width} "
          f"depth {tracked.depth}, {tracked.epochs} epochs, {tracked.num_measurements} "
          f"measurements, threads {args.threads}, best of {args.repeats}")
    result = run_variants(tracked, args.repeats)
    for title, key in (("wall time", "wall"), ("CPU time", "cpu")):
        table = result[key]
        print(f"{title}:")
        for name, label in (("tracked", "train() with tracking"),
                            ("untracked", "train() without tracking"),
                            ("hand", "hand-written loop")):
            runs = ", ".join(f"{t:.2f}" for t in table[name])
            print(f"  {label:28s} {min(table[name]):8.2f} s   (runs: {runs})")
        o = overheads(table)
        print(f"  tracking overhead   {100 * o['tracking']:+6.1f} %   (target <= 10 %; "
              f"medians: {100 * o['tracking_median']:+.1f} %)")
        print(f"  framework overhead  {100 * o['framework']:+6.1f} %   (target <= 5 %; "
              f"medians: {100 * o['framework_median']:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
