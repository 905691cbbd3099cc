"""``ncollapse train``: train into the terminal phase with tracking, or resume, or sweep the lr."""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from ncollapse.config import DEVICES, LR_SELECT, OPTIMIZERS, PRESETS, SCHEDULES

# flag dest -> TrainConfig field (flags left unset do not override the preset or file)
_FLAG_FIELDS = (
    "dataset", "root", "download", "per_class", "imbalance", "ratio", "model", "width", "depth",
    "batchnorm", "fixed_etf_classifier", "loss", "label_smoothing", "mse_scale", "focal_gamma",
    "optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "schedule", "seed",
    "device", "deterministic", "num_measurements", "snapshot_per_class", "measure_test",
    "checkpoint_every", "layers",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    # the valid choices live with their registries; imported when the parser is built
    from ncollapse.data import DATASETS
    from ncollapse.losses import LOSSES
    from ncollapse.models import MODELS

    p = subparsers.add_parser(
        "train", help="train a classifier into the terminal phase, tracking neural collapse",
        description="Train with tracking of NC1-NC4 into a run directory. Precedence: "
                    "defaults < --preset < --config < flags.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named config")
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<preset-or-dataset>-"
                                            "<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint (with --epochs N: "
                        "and change its number of epochs)")
    p.add_argument("--lr-sweep", action="store_true",
                   help="train once per lr of the paper's grid (25 values in [1e-4, 0.25]) "
                        "and report the best")
    p.add_argument("--lr-grid", type=_floats, metavar="LR,LR,...",
                   help="lr-sweep grid instead of the paper's 25 values")
    p.add_argument("--select", choices=LR_SELECT, default="train_loss",
                   help="lr-sweep criterion (default: final train loss)")
    p.add_argument("--tensorboard", type=Path, metavar="DIR",
                   help="also write the run's metrics (a scalar per metric and split) and its "
                        "overview figure to the TensorBoard log directory DIR (needs "
                        "pip install 'ncollapse[tensorboard]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads for this command (default: torch's choice; 1 is "
                        "often fastest for small models on a busy machine)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS)
    g.add_argument("--root", help="data directory")
    g.add_argument("--download", action="store_const", const=True,
                   help="download missing files (SHA-256 checked)")
    g.add_argument("--per-class", type=int, help="training samples per class")
    g.add_argument("--imbalance", choices=["step", "exp"], help="class-imbalance profile")
    g.add_argument("--ratio", type=float, help="imbalance ratio R >= 1")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODELS)
    g.add_argument("--width", type=int)
    g.add_argument("--depth", type=int)
    g.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--fixed-etf-classifier", action="store_const", const=True,
                   help="fix the classifier to a simplex ETF (not trained)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", choices=LOSSES)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--mse-scale", type=float)
    g.add_argument("--focal-gamma", type=float)
    g.add_argument("--optimizer", choices=OPTIMIZERS)
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--seed", type=int)
    g.add_argument("--device", choices=DEVICES, help="auto picks CUDA when present")
    g.add_argument("--deterministic", action="store_const", const=True,
                   help="deterministic torch algorithms (GPU reproducibility; slower)")
    g = p.add_argument_group("tracking")
    g.add_argument("--num-measurements", type=int, help="log-spaced measurement epochs")
    g.add_argument("--snapshot-per-class", type=int, help="samples per class in snapshots")
    g.add_argument("--measure-test", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints (0: auto)")
    g.add_argument("--layers", nargs="+", metavar="PATTERN",
                   help="also measure these layers (module names or glob patterns such as "
                        "'body.*'; conv maps averaged over space) at every measurement")
    _describe_flags(p)
    p.set_defaults(func=run)


# What a flag sets, for the add_argument calls without help text.
_WHAT = {
    "dataset": "data set", "root": "data directory", "per_class": "training samples per class",
    "imbalance": "class-imbalance profile",
    "ratio": "imbalance ratio R >= 1 (largest / smallest class)",
    "model": "architecture", "width": "hidden units (mlp) or base channels (vgg, resnet18)",
    "depth": "hidden layers (mlp) or layers (vgg: 11, 13, 16, 19; resnet18: 18)",
    "batchnorm": "BatchNorm layers", "loss": "training loss",
    "label_smoothing": "smoothing of --loss label-smoothing",
    "mse_scale": "target scale of --loss mse",
    "focal_gamma": "focusing parameter of --loss focal", "optimizer": "optimiser",
    "lr": "learning rate", "momentum": "SGD momentum", "weight_decay": "weight decay",
    "batch_size": "batch size (over all processes)", "epochs": "number of epochs",
    "schedule": "learning-rate schedule (step: /10 after 1/3 and 2/3 of the epochs)",
    "seed": "random seed", "measure_test": "measure the test split too",
}
# The defaults of the flags that are not TrainConfig fields (those come from TrainConfig).
_DEFAULT = {
    "preset": "none, the TrainConfig defaults below", "config": "none",
    "resume": "none, a new run", "lr_sweep": "off, one run",
    "lr_grid": "the paper's 25 values", "tensorboard": "none",
    "no_progress": "off, a progress bar on stderr",
}
# What None means for the TrainConfig fields that default to None.
_NONE_MEANS = {
    "root": "the data set's folder ($NCOLLAPSE_DATA_DIR/<name> or ~/.cache/ncollapse/<name>)",
    "per_class": "all samples", "imbalance": "none, balanced",
}


def _describe_flags(parser: argparse.ArgumentParser) -> None:
    """Give every flag help text that ends with its default (TrainConfig's for config flags)."""
    from ncollapse.config import TrainConfig
    from ncollapse.models import MODEL_DEFAULTS

    config = TrainConfig()

    def per_model(key: str) -> str:
        def show(v: object) -> str:
            return ("on" if v else "off") if isinstance(v, bool) else str(v)

        return "the model's: " + ", ".join(f"{m} {show(d[key])}"
                                          for m, d in MODEL_DEFAULTS.items())

    model_default = {key: per_model(key) for key in ("width", "depth", "batchnorm")}
    config_fields = {f.name for f in fields(TrainConfig)}
    for action in parser._actions:
        what = action.help or _WHAT.get(action.dest, "")
        if isinstance(action, argparse._HelpAction) or "default" in what:
            continue
        if action.dest in model_default:
            shown = model_default[action.dest]
        elif action.dest in config_fields:
            value = getattr(config, action.dest)
            if value is None:
                shown = _NONE_MEANS.get(action.dest, "none")
            elif isinstance(value, bool):
                shown = "on" if value else "off"
            elif isinstance(value, list):
                shown = ", ".join(map(str, value)) or "none"
            else:
                shown = str(value)
        else:
            shown = _DEFAULT[action.dest]
        action.help = f"{what} (default: {shown})".strip()


def run(args: argparse.Namespace) -> int:
    # the training stack is imported only when a run starts (``ncollapse --help`` stays light)
    from ncollapse.config import load_config
    from ncollapse.training import TrainingDiverged, lr_sweep, run_summary, train

    overrides = {k: getattr(args, k) for k in _FLAG_FIELDS}
    progress = not args.no_progress
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.resume is not None:
        bad = [f"--{k.replace('_', '-')}" for k, v in overrides.items()
               if v is not None and k not in ("device", "epochs")]
        bad += [f for f, v in (("--preset", args.preset), ("--config", args.config),
                               ("--lr-sweep", args.lr_sweep), ("--out", args.out)) if v]
        if bad:
            raise ValueError("--resume takes the config from the run dir (only --device and "
                             "--epochs may change); drop " + " ".join(bad))
        config = None
        if args.device is not None:
            config = load_config(path=args.resume / "config.toml",
                                 overrides={"device": args.device})
        out, resume = args.resume, True
    else:
        config = load_config(preset=args.preset, path=args.config, overrides=overrides)
        out, resume = args.out or _default_out(config), False

    if args.lr_sweep:
        result = lr_sweep(config, out=out, grid=args.lr_grid, select=args.select,
                          progress=progress)
        print(f"lr sweep: {out}")
        for r in result["results"]:
            val = "diverged" if r["diverged"] else (
                f"train_loss {_fmt(r['train_loss'])}  test_accuracy {_fmt(r['test_accuracy'])}")
            print(f"  lr {r['lr']:.4g}: {val}")
        best = result["best"]
        print(f"best lr by {args.select}: " + (f"{best['lr']:.6g}" if best else "none"))
        return 0 if best else 1

    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    tensorboard = None
    if args.tensorboard is not None and main:  # before training: a missing package fails now
        from ncollapse.integrations.tensorboard import TensorBoardLogger  # optional package

        tensorboard = TensorBoardLogger(args.tensorboard)
    if main:
        print(f"run dir: {out}")
    try:  # NC scalars reach TensorBoard live, at each measurement
        train(config, out=out, resume=resume, progress=progress,
              epochs=args.epochs if resume else None,
              on_measurement=tensorboard.log_row if tensorboard is not None else None)
        if tensorboard is not None:  # then the per-epoch scalars and the overview figure
            tensorboard.log_epochs_and_overview(out)
            print(f"tensorboard: {args.tensorboard}")
    except TrainingDiverged as exc:
        print(f"ncollapse train: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if tensorboard is not None:
            tensorboard.close()
    if not main:
        return 0
    for line in summary_lines(run_summary(out)):
        print(line)
    return 0


def summary_lines(s: dict) -> list[str]:
    """The run summary in words: no "None" anywhere, every epoch named as "epoch N"."""
    lines = [f"state: {s['state'] or 'unknown'}  epochs done: {_fmt(s['epoch'])}  "
             f"time: {_fmt(s['time'])} s"]
    onset = s["tpt_onset_epoch"]
    if onset is None:
        lines.append("TPT onset: not reached (the training error never reached 0)")
    else:
        lines.append(f"TPT onset: epoch {onset} (the first epoch with zero training error)")
        at = s["nc1_at_onset_epoch"]
        if s["nc1_at_onset"] is not None:
            where = (f"epoch {at}" if at == onset
                     else f"epoch {at}, the first measurement after the onset")
            lines.append(f"NC1 at the onset ({where}): {_fmt(s['nc1_at_onset'])}")
    if s["final_epoch"] is None:
        lines.append("no measurement was recorded")
    else:
        lines.append(f"final (epoch {s['final_epoch']}): NC1 {_fmt(s['nc1'])}  "
                     f"NC2 equinorm {_fmt(s['nc2_equinorm_means'])} "
                     f"equiangular {_fmt(s['nc2_equiangular_means'])}  "
                     f"NC3 {_fmt(s['nc3_self_duality'])}  NC4 {_fmt(s['nc4_ncc_mismatch'])}")
        lines.append(f"final train error {_fmt(s['train_error'])}  "
                     f"test accuracy {_fmt(s['test_accuracy'])}")
    return lines


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive learning rates, got {text!r}")
    return values


def _default_out(config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.preset or config.dataset}-{stamp}"


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"
