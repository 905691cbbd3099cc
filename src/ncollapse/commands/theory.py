"""``ncollapse theory <model>``: run one theory-lab experiment, print, plot, write JSON."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from ncollapse.io import atomic_write_json

# subcommand -> module in ncollapse.theory that implements it. Each module defines
#   HELP: str                                  one line for ``ncollapse theory --help``
#   configure_parser(p: ArgumentParser) -> None  its own flags (common ones are added here)
#   run_cli(args: Namespace) -> dict           solve, write figures under args.out, return the
#                                              JSON result: at least "objective",
#                                              "closed_form_objective" (None where none) and
#                                              "metrics" (the NCMetrics.to_dict() of the solution),
#                                              plus "summary": list of lines to print and
#                                              "figures": list of written paths.
SUBCOMMANDS = {
    "ufm": "ncollapse.theory.ufm",
    "layer-peeled": "ncollapse.theory.layer_peeled",
    "central-path": "ncollapse.theory.central_path",
    "implicit-bias": "ncollapse.theory.implicit_bias",
    "last-layer": "ncollapse.theory.last_layer",
}


def add_common_arguments(p: argparse.ArgumentParser, *, classes: int = 4, per_class: int = 10,
                         dim: int = 8, lambda_w: float = 5e-3, lambda_h: float = 5e-3,
                         lambda_b: float = 5e-3) -> None:
    """The flags every theory subcommand takes; modules may pass their own defaults."""
    g = p.add_argument_group("common")
    g.add_argument("--classes", type=int, default=classes, help="number of classes C")
    g.add_argument("--per-class", type=int, default=per_class, help="samples per class n")
    g.add_argument("--dim", type=int, default=dim, help="feature dimension d")
    g.add_argument("--lambda-w", type=float, default=lambda_w, help="weight decay on W")
    g.add_argument("--lambda-h", type=float, default=lambda_h, help="weight decay on H")
    g.add_argument("--lambda-b", type=float, default=lambda_b, help="weight decay on b")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--out", type=Path, default=None,
                   help="directory for figures (default: ./theory-<model>)")
    g.add_argument("--json", type=Path, default=None, dest="json_path",
                   help="write the result as JSON to this path")
    g.add_argument("--no-figures", action="store_true", help="skip writing figures")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "theory", help="theory lab: last layers in isolation, checked against closed forms",
        description="Solve a model of the last layers and compare with its closed form.",
    )
    sub = parser.add_subparsers(dest="model", metavar="MODEL", required=True)
    for name, modname in SUBCOMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.configure_parser(p)
        p.set_defaults(func=run, theory_module=modname)


def run(args: argparse.Namespace) -> int:
    if args.out is None:
        args.out = Path(f"theory-{args.model}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = importlib.import_module(args.theory_module).run_cli(args)
    for line in result.get("summary", []):
        print(line)
    for fig in result.get("figures", []):
        print(f"figure: {fig}")
    if args.json_path is not None:
        payload = {k: v for k, v in result.items() if k not in ("summary",)}
        atomic_write_json(args.json_path, json.loads(json.dumps(payload, default=_to_jsonable)))
        print(f"json: {args.json_path}")
    return 0


def _to_jsonable(obj):
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
