"""``ncollapse lm``: train a small GPT on the King James Bible and measure the neural collapse
of its last hidden state against the next-token classes at several steps of training."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_SHOWN = (
    ("nc1", "NC1"), ("cdnv", "CDNV"), ("hyperspherical_energy_means", "HE means"),
    ("hyperspherical_energy_weights", "HE weights"), ("uniform_duality", "UD"),
    ("ncc_mismatch", "NC4"), ("accuracy", "acc"),
)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None


# flag -> (LMConfig field, type, help); the defaults in the help are checked against LMConfig
# by tests/test_lm.py (the config module is not imported here, to keep `ncollapse --help` fast)
_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--max-lines", "max_lines", int, "only the first lines of the corpus (default: all)"),
    ("--vocab-size", "vocab_size", int, "BPE vocabulary = number of classes (default: 8192)"),
    ("--steps", "steps", int, "training steps (default: 500)"),
    ("--measure-positions", "measure_positions", int,
     "measure only the first N training positions (default: all)"),
    ("--batch-size", "batch_size", int, "windows per training step (default: 32)"),
    ("--block-size", "block_size", int, "context length (default: 128)"),
    ("--layers", "n_layer", int, "transformer blocks (default: 4)"),
    ("--heads", "n_head", int, "attention heads (default: 4)"),
    ("--width", "n_embd", int, "hidden size d (default: 128)"),
    ("--lr", "lr", float, "peak learning rate; the cosine decay ends at lr/10 (default: 0.002)"),
    ("--seed", "seed", int, "random seed (default: 0)"),
    ("--threads", "threads", int, "torch CPU threads (default: torch's choice)"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lm", help="neural collapse in a small language model (King James Bible, GPT, BPE)",
        description="Train a byte-pair tokenizer and a small GPT-style decoder on the King "
                    "James Bible (Debian package bible-kjv; no download), and at the chosen "
                    "steps measure neural collapse of the last hidden state against the "
                    "next-token classes over the training positions, streamed in two passes. "
                    "Writes config.json, results.json, tokenizer.json, model.pt and lm.png into "
                    "OUT. Needs the extra ncollapse[lm] (tokenizers).",
    )
    p.add_argument("--out", type=Path, help="output directory (default: runs/lm-<time>)")
    p.add_argument("--text", metavar="FILE", help="a UTF-8 text file to use instead of the Bible")
    for flag, dest, kind, text in _FLAGS:
        p.add_argument(flag, dest=dest, type=kind, help=text, metavar="N" if kind is int else "X")
    p.add_argument("--measure-steps", type=_ints, metavar="S,S,...",
                   help="steps at which to measure (default: 0, 1/8, 1/3 and all of --steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ncollapse.lm.train import LMConfig, run_lm

    given = {dest: getattr(args, dest) for _, dest, _, _ in _FLAGS
             if getattr(args, dest) is not None}
    if args.lr is not None:
        given["min_lr"] = args.lr / 10
    cfg = LMConfig(text=args.text, measure_steps=args.measure_steps, **given)
    out = args.out or Path("runs") / time.strftime("lm-%Y%m%d-%H%M%S")
    try:
        rows = run_lm(cfg, out, progress=not args.no_progress, log=print)
    except ImportError as exc:  # the optional extra is missing: one line, no traceback
        print(f"ncollapse lm: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(f"{'step':>6} {'val loss':>9} " + " ".join(f"{label:>10}" for _, label in _SHOWN))
    for r in rows:
        vals = [r["metrics"].get(k) for k, _ in _SHOWN]
        print(f"{r['step']:>6} {r['val_loss']:>9.4f} "
              + " ".join(f"{'—':>10}" if v is None else f"{v:>10.4g}" for v in vals))
    print(f"\nresults: {out}/results.json, config: {out}/config.json, figure: {out}/lm.png")
    return 0
