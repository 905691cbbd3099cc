"""``ncollapse plot``: the paper's figures for one or more run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from ncollapse.commands._args import int_in

# Library imports happen inside run(): ``ncollapse --help`` imports every command module,
# and torch/matplotlib would make it slow.


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot", help="paper figures (NC1-NC4, error, loss, accuracy vs epoch) for runs",
        description="One panel per measure against epoch on log axes, in the style of Papyan, "
                    "Han & Donoho (2020), with the TPT onset marked; several runs overlay. "
                    "Writes overview.<fmt> and one <panel>.<fmt> per measure.",
    )
    p.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN_DIR",
                   help="run directories (one or more)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: RUN_DIR/figures for one run, ./figures "
                        "for several)")
    p.add_argument("--format", default="png,svg", dest="formats",
                   help="comma-separated formats among png, svg, pdf (default: png,svg)")
    p.add_argument("--dpi", type=int_in(10, 1200), default=150,
                   help="PNG resolution, 10 to 1200 (default: 150)")
    p.add_argument("--label", action="extend", nargs="+", dest="labels", metavar="NAME",
                   help="legend names of the runs, one per run in order (default: directory "
                        "names)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ncollapse.plots import plot_runs
    from ncollapse.rundir import load_runs

    run_dirs, labels = split_labels(args.run_dirs, args.labels)
    runs = load_runs(run_dirs, labels)
    out = args.out
    if out is None:
        out = runs[0].path / "figures" if len(runs) == 1 else Path("figures")
    for r in runs:
        for problem in r.problems:
            print(f"note: {r.name}: {problem}")
    paths = plot_runs(runs, out, args.formats, dpi=args.dpi)
    print(f"wrote {len(paths)} files to {out}/ (overview: {paths[0]})")
    return 0


def split_labels(run_dirs: list[Path], labels: list[str] | None
                 ) -> tuple[list[Path], list[str] | None]:
    """``--label a b RUN1 RUN2``: argparse gives every word after ``--label`` to the labels;
    there is one label per run, so the second half of the words are the run directories."""
    labels = list(labels or [])
    if labels and len(labels) > len(run_dirs):
        total = len(labels) + len(run_dirs)
        if total % 2:
            raise ValueError(f"--label needs one name per run directory; got {total} words "
                             f"for names and directories together ({' '.join(labels)})")
        half = total // 2
        run_dirs = [Path(w) for w in labels[half:]] + list(run_dirs)
        labels = labels[:half]
    if not run_dirs:
        raise ValueError("give at least one RUN_DIR")
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"--label needs one name per run directory: {len(labels)} names for "
                         f"{len(run_dirs)} runs")
    return run_dirs, labels or None
