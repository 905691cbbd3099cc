"""``ncollapse theory <model>``: run one theory-lab experiment, print, draw, write JSON.

Each model's command lives in a submodule of this package and defines
  HELP: str                                    one line for ``ncollapse theory --help``
  configure_parser(p: ArgumentParser) -> None  its flags (:func:`add_common_arguments` included)
  run_cli(args: Namespace) -> dict             solve and return the JSON result: at least
                                               "objective", "closed_form_objective" (None where
                                               none) and "metrics" (NCMetrics.to_dict() of the
                                               solution), plus "summary" (lines to print) and
                                               "figures" ({file name: matplotlib Figure}, empty
                                               with --no-figures).
This module does the rest: the output directory, saving the figures, printing, the JSON file.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ncollapse.io import atomic_savefig, atomic_write_json

SUBCOMMANDS = {
    "ufm": "ncollapse.commands.theory.ufm",
    "layer-peeled": "ncollapse.commands.theory.layer_peeled",
    "central-path": "ncollapse.commands.theory.central_path",
    "implicit-bias": "ncollapse.commands.theory.implicit_bias",
    "last-layer": "ncollapse.commands.theory.last_layer",
}


def add_common_arguments(p: argparse.ArgumentParser, *, classes: int = 4, per_class: int = 10,
                         dim: int = 8, lambda_w: float | None = 5e-3,
                         lambda_h: float | None = 5e-3, lambda_b: float | None = 5e-3,
                         lambda_none: str = "") -> None:
    """The flags every theory subcommand takes; each model passes its own defaults
    (``lambda_none``: what a weight decay left at None means for that model, for --help)."""
    g = p.add_argument_group("common")
    g.add_argument("--classes", type=int, default=classes, help="number of classes C")
    g.add_argument("--per-class", type=int, default=per_class, help="samples per class n")
    g.add_argument("--dim", type=int, default=dim, help="feature dimension d")
    for name, value in (("W", lambda_w), ("H", lambda_h), ("b", lambda_b)):
        note = f" ({lambda_none})" if value is None and lambda_none else ""
        g.add_argument(f"--lambda-{name.lower()}", type=float, default=value,
                       help=f"weight decay on {name}{note}")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument("--out", type=Path, default=None,
                   help="directory for figures (default: ./theory-<model>)")
    g.add_argument("--json", type=Path, default=None, dest="json_path",
                   help="write the result as JSON to this path")
    g.add_argument("--no-figures", action="store_true",
                   help="skip drawing figures (every computation still runs)")


class _DefaultsHelp(argparse.HelpFormatter):
    """Adds "(default: X)" to a flag's help unless the help already says it or the flag takes
    no value (switches) or has no default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.nargs == 0
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``theory`` and one subcommand per model."""
    parser = subparsers.add_parser(
        "theory", help="theory lab: last layers in isolation, checked against closed forms",
        description="Solve a model of the last layers and compare with its closed form.",
    )
    sub = parser.add_subparsers(dest="model", metavar="MODEL", required=True)
    for name, modname in SUBCOMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP,
                           formatter_class=_DefaultsHelp)
        mod.configure_parser(p)
        p.set_defaults(func=run, theory_module=modname)


def run(args: argparse.Namespace) -> int:
    """Solve, save the figures under ``--out``, print the summary, write ``--json``."""
    if args.out is None:
        args.out = Path(f"theory-{args.model}")
    result = importlib.import_module(args.theory_module).run_cli(args)
    paths = []
    if result.get("figures"):
        args.out.mkdir(parents=True, exist_ok=True)
        for name, fig in result["figures"].items():
            paths.append(str(atomic_savefig(fig, args.out / name, format="png")))
    result["figures"] = paths
    for line in result.get("summary", []):
        print(line)
    for path in paths:
        print(f"figure: {path}")
    if args.json_path is not None:
        payload = {k: v for k, v in result.items() if k != "summary"}
        atomic_write_json(args.json_path, json.loads(json.dumps(payload, default=_to_jsonable)))
        print(f"json: {args.json_path}")
    return 0


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
