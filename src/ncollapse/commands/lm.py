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


def register(subparsers: argparse._SubParsersAction) -> None:
    from ncollapse.lm.train import LMConfig

    d = LMConfig()
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
    p.add_argument("--text", type=Path, help="a UTF-8 text file to use instead of the Bible")
    p.add_argument("--max-lines", type=int, help="only the first lines of the corpus")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size,
                   help=f"BPE vocabulary = number of classes (default {d.vocab_size})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps ({d.steps})")
    p.add_argument("--measure-steps", type=_ints, metavar="S,S,...",
                   help="steps at which to measure (default: 0, 1/8, 1/3 and all of --steps)")
    p.add_argument("--measure-positions", type=int,
                   help="measure only the first N training positions (default: all)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"windows per training step ({d.batch_size})")
    p.add_argument("--block-size", type=int, default=d.block_size,
                   help=f"context length ({d.block_size})")
    p.add_argument("--layers", type=int, default=d.n_layer, help=f"blocks ({d.n_layer})")
    p.add_argument("--heads", type=int, default=d.n_head, help=f"attention heads ({d.n_head})")
    p.add_argument("--width", type=int, default=d.n_embd,
                   help=f"hidden size d ({d.n_embd})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate ({d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed ({d.seed})")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ncollapse.lm.train import LMConfig, run_lm

    cfg = LMConfig(
        text=None if args.text is None else str(args.text), max_lines=args.max_lines,
        vocab_size=args.vocab_size, steps=args.steps, measure_steps=args.measure_steps,
        measure_positions=args.measure_positions, batch_size=args.batch_size,
        block_size=args.block_size, n_layer=args.layers, n_head=args.heads, n_embd=args.width,
        lr=args.lr, min_lr=args.lr / 10, seed=args.seed, threads=args.threads,
    )
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
