"""``ncollapse demo``: train the demo preset, then figures, animation and report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="train a small network into collapse, then figures, animation, report",
        description="Train the `demo` preset (an MLP on scikit-learn's 8x8 digits) well past "
                    "zero training error, then write the paper's figures, the ETF animation "
                    "and a self-contained HTML report. A finished run in OUT/run is reused, "
                    "an unfinished one resumed.",
    )
    p.add_argument("--out", type=Path, default=Path("ncollapse-demo"),
                   help="output directory (default: ./ncollapse-demo)")
    p.add_argument("--fresh", action="store_true",
                   help="delete the run in OUT/run and train again")
    p.add_argument("--classes", type=int, choices=(3, 4), default=None,
                   help="classes in the animation: 3 (triangle) or 4 (tetrahedron, default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported only when the demo runs (``ncollapse --help`` imports every command module)
    from ncollapse.demo import run_demo

    run_demo(args.out, fresh=args.fresh, progress=not args.no_progress, classes=args.classes)
    return 0
