"""``ncollapse report``: one self-contained HTML file with everything about a run."""

from __future__ import annotations

import argparse
from pathlib import Path

# Library imports happen inside run(): ``ncollapse --help`` imports every command module,
# and torch/matplotlib would make it slow.


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="self-contained HTML report of a run (figures, animation, numbers)",
        description="Write one HTML file with the run's config, its numbers at the TPT onset "
                    "and at the end, all figures, the animation and what each panel shows. "
                    "Figures and animation are embedded; it needs no network.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory")
    p.add_argument("--out", type=Path, default=None,
                   help="HTML file (default: RUN_DIR/report.html)")
    p.add_argument("--animation", type=Path, default=None, metavar="GIF",
                   help="embed this GIF instead of making one")
    p.add_argument("--no-animation", action="store_true", help="leave the animation out")
    p.add_argument("--dpi", type=int, default=120, help="figure resolution (default: 120)")
    p.add_argument("--classes", type=int, choices=(3, 4), default=None,
                   help="classes in the animation: 3 (triangle) or 4 (tetrahedron)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ncollapse.report import build_report
    from ncollapse.rundir import load_run

    run = load_run(args.run_dir)
    for problem in run.problems:
        print(f"note: {problem}")
    path = build_report(run, args.out, animation=args.animation, classes=args.classes,
                        make_animation=not args.no_animation, dpi=args.dpi)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return 0
