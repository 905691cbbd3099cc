"""``ncollapse animate``: the ETF animation of a run (or of the unconstrained features model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ncollapse.commands._args import float_in, int_in

# Library imports happen inside run(): ``ncollapse --help`` imports every command module,
# and torch/matplotlib would make it slow.


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "animate", help="GIF/MP4 of features, class means and classifier converging to an ETF",
        description="Animate the snapshots of RUN_DIR over the measurement epochs: 3 classes "
                    "as a triangle, 4 as a rotating tetrahedron, with the best-aligned simplex "
                    "ETF as reference. With --ufm, animate gradient descent on the "
                    "unconstrained features model instead. Writes a GIF, and an MP4 beside it "
                    "when ffmpeg is on PATH.",
    )
    p.add_argument("run_dir", nargs="?", type=Path, metavar="RUN_DIR",
                   help="run directory (omit with --ufm)")
    p.add_argument("--out", type=Path, default=None,
                   help="GIF path (default: RUN_DIR/animation.gif, or ./ufm-animation.gif)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--classes", type=int, choices=(3, 4), default=None,
                     help="draw the first 3 (triangle) or 4 (tetrahedron) classes "
                          "(default: 4 when possible)")
    sel.add_argument("--class-ids", default=None, metavar="I,J,K[,L]",
                     help="comma-separated ids of the 3 or 4 classes to draw")
    p.add_argument("--fps", type=float_in(0, 60, open_lo=True), default=6.0,
                   help="frames per second, in (0, 60] (default: 6)")
    p.add_argument("--mp4", action=argparse.BooleanOptionalAction, default=None,
                   help="also write an MP4 (default: when ffmpeg is on PATH)")
    p.add_argument("--max-frames", type=int_in(2, 10000), default=60,
                   help="at most this many frames, evenly thinned (default: 60)")
    p.add_argument("--frames", type=Path, default=None, metavar="DIR",
                   help="also save every frame as a PNG in DIR")
    u = p.add_argument_group("unconstrained features model (--ufm)")
    u.add_argument("--ufm", action="store_true",
                   help="animate plain gradient descent on the UFM instead of a run")
    u.add_argument("--per-class", type=int_in(1, 1000), default=15,
                   help="samples per class (default: 15)")
    u.add_argument("--dim", type=int_in(2, 4096), default=6, help="feature dimension (default: 6)")
    u.add_argument("--loss", choices=("ce", "mse"), default="ce", help="loss (default: ce)")
    u.add_argument("--lambda-w", type=float_in(0, 10), default=5e-3, help="weight decay on W")
    u.add_argument("--lambda-h", type=float_in(0, 10), default=5e-3, help="weight decay on H")
    u.add_argument("--lambda-b", type=float_in(0, 10), default=5e-3, help="weight decay on b")
    u.add_argument("--steps", type=int_in(1, 10**7), default=3000,
                   help="gradient steps (default: 3000)")
    u.add_argument("--lr", type=float_in(0, 10, open_lo=True), default=0.5,
                   help="step size, in (0, 10] (default: 0.5)")
    u.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="random seed (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ncollapse import animation as A

    class_ids = _parse_ids(args.class_ids) if args.class_ids else None
    if args.ufm:
        if args.run_dir is not None:
            raise ValueError("give either RUN_DIR or --ufm, not both")
        if class_ids is not None:
            raise ValueError("--class-ids is for runs; with --ufm use --classes 3 or 4")
        from ncollapse.theory.ufm import gradient_descent_trajectory

        classes = args.classes or 4
        records = gradient_descent_trajectory(
            classes=classes, per_class=args.per_class, dim=args.dim, loss=args.loss,
            lambda_w=args.lambda_w, lambda_h=args.lambda_h, lambda_b=args.lambda_b, bias=True,
            steps=args.steps, lr=args.lr, num_records=args.max_frames, seed=args.seed)
        frames = A.ufm_frames(records, classes=classes)
        out = args.out or Path("ufm-animation.gif")
    else:
        if args.run_dir is None:
            raise ValueError("give a RUN_DIR to animate (or --ufm for the unconstrained "
                             "features model)")
        from ncollapse.rundir import load_run

        run = load_run(args.run_dir)
        frames = A.run_frames(run, classes=args.classes, class_ids=class_ids,
                              max_frames=args.max_frames)
        for problem in run.problems:  # damaged or skipped snapshots are named, never dropped
            print(f"note: {problem}")
        out = args.out or args.run_dir / "animation.gif"
    if args.frames is not None:
        for frame in frames:
            A.render_frame(frame, out=args.frames / f"{frame.time_label}_{frame.epoch:06d}.png")
        print(f"wrote {len(frames)} frame PNGs to {args.frames}/")
    paths = A.write_animation(frames, out, fps=args.fps, mp4=args.mp4)
    last = frames[-1]
    nc1 = "n/a" if last.nc1 is None else f"{last.nc1:.3g}"
    print(f"{len(frames)} frames, classes {', '.join(map(str, last.class_ids))}; last "
          f"{last.time_label} {last.epoch}: NC1 = {nc1}, distance of the means to the ETF "
          f"{last.etf_distance:.3g}")
    for path in paths:
        print(f"wrote {path}")
    return 0


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--class-ids must be comma-separated integers such as 0,1,2; got "
                         f"{text!r}") from None
