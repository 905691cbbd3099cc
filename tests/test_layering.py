"""The layering rules of ncollapse (docs/architecture.md), pinned by parsing every module's imports.

Layers, top to bottom; a module may import from its own layer or below, never above:

5. cli, commands/*                       parse arguments, print; nothing imports them
4. demo, report, animation, plots, theory/figures, integrations   read runs and results
3. training (loop, tracking, checkpoints, sweep), lm
2. collect (hooks on any nn.Module), rundir (the run-directory format), the package root
1. metrics/, theory/ solvers
0. geometry, validation, io, keys, config, data, models, losses, distributed

Besides: no module outside commands/ and cli.py imports ``ncollapse.commands``, and the
training loop never imports the theory lab. Every import counts, including those inside
functions, under ``if TYPE_CHECKING:`` and ``importlib.import_module("literal")`` calls.
Every module must be placed in the table: a new module fails here until it is given a layer.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "ncollapse"

# Module (or package: it covers every submodule) -> layer. The longest matching name wins.
LAYERS: dict[str, int] = {
    "ncollapse.cli": 5,
    "ncollapse.__main__": 5,
    "ncollapse.commands": 5,
    "ncollapse.demo": 4,
    "ncollapse.report": 4,
    "ncollapse.animation": 4,
    "ncollapse.plots": 4,
    "ncollapse.theory.figures": 4,
    # the Lightning/Transformers/TensorBoard callbacks draw the overview figure (plots) and
    # call the training layer's schedule; only user code and commands import them
    "ncollapse.integrations": 4,
    "ncollapse.training": 3,
    "ncollapse.lm": 3,
    "ncollapse.collect": 2,
    "ncollapse.rundir": 2,
    "ncollapse": 2,  # the package root re-exports collect_features, measure_model, measure
    "ncollapse.metrics": 1,
    "ncollapse.theory": 1,
    "ncollapse.geometry": 0,
    "ncollapse.validation": 0,
    "ncollapse.io": 0,
    "ncollapse.keys": 0,
    "ncollapse.config": 0,
    "ncollapse.data": 0,
    "ncollapse.models": 0,
    "ncollapse.losses": 0,
    "ncollapse.distributed": 0,
}
LAYER_NAMES = {5: "cli/commands", 4: "readers, figures, integrations", 3: "training/lm",
               2: "collect/rundir", 1: "metrics/theory solvers", 0: "foundations"}


@dataclass(frozen=True)
class Import:
    target: str  # the ncollapse module imported
    line: int


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of ``module``: the entry of the longest table name that is it or a parent."""
    best = None
    for name, layer in LAYERS.items():
        if (module == name or module.startswith(name + ".")) and (
                best is None or len(name) > len(best[0])):
            best = (name, layer)
    if best is None or (best[0] == PACKAGE and module != PACKAGE):
        return None  # the root's entry covers the root only: every submodule needs its own
    return best[1]


def _is_package_module(module: str, src: Path) -> bool:
    base = src.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, *, is_package: bool = False,
               src: Path = SRC) -> list[Import]:
    """Every ncollapse module that ``source`` (the text of ``module``) imports, anywhere."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def add(name: str, line: int) -> None:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            found.append(Import(name, line))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                if origin == PACKAGE and alias.name == "__version__":
                    continue  # metadata, set before the root imports anything
                # ``from ncollapse import plots`` imports the module ncollapse.plots;
                # ``from ncollapse import measure`` imports the package root
                sub = f"{origin}.{alias.name}"
                add(sub if _is_package_module(sub, src) else origin, node.lineno)
        elif isinstance(node, ast.Call) and node.args and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "import_module")):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                add(arg.value, node.lineno)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(
                    arg.values[0], ast.Constant):  # f"ncollapse.commands.{name}"
                add(str(arg.values[0].value).rstrip("."), node.lineno)
    return found


def violations(module: str, source: str, *, is_package: bool = False,
               src: Path = SRC) -> list[str]:
    """Every broken layering rule in ``source``, the text of ``module``; [] when it is clean."""
    layer = layer_of(module)
    if layer is None:
        return [f"{module}: not in the layer table of tests/test_layering.py; give it a layer"]
    out = []
    for imp in imports_of(source, module, is_package=is_package, src=src):
        where = f"{module}:{imp.line} imports {imp.target}"
        target_layer = layer_of(imp.target)
        if target_layer is None:
            out.append(f"{where}, which is not in the layer table")
            continue
        if target_layer > layer:
            out.append(f"{where}: layer {target_layer} ({LAYER_NAMES[target_layer]}) is above "
                       f"layer {layer} ({LAYER_NAMES[layer]})")
        in_cli = module == "ncollapse.cli" or module.startswith("ncollapse.commands")
        if imp.target.startswith("ncollapse.commands") and not in_cli:
            out.append(f"{where}: only cli.py and commands/ may import the commands")
        training = module == "ncollapse.training" or module.startswith("ncollapse.training.")
        theory = imp.target == "ncollapse.theory" or imp.target.startswith("ncollapse.theory.")
        if training and theory:
            out.append(f"{where}: the training loop must not import the theory lab")
    return out


def _modules() -> list[tuple[str, Path]]:
    return sorted((module_name(p), p) for p in (SRC / PACKAGE).rglob("*.py"))


# ----------------------------------------------------------------------------- the package


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_module_respects_the_layers(module: str, path: Path) -> None:
    problems = violations(module, path.read_text(encoding="utf-8"),
                          is_package=path.name == "__init__.py")
    assert problems == [], "\n".join(problems)


def test_the_walk_sees_the_whole_package() -> None:
    names = {m for m, _ in _modules()}
    for expected in ("ncollapse", "ncollapse.cli", "ncollapse.collect", "ncollapse.plots",
                     "ncollapse.data", "ncollapse.data.registry", "ncollapse.metrics"):
        assert expected in names
    # the real import graph is seen: the CLI reaches the commands through importlib
    cli = SRC / PACKAGE / "cli.py"
    targets = {i.target for i in imports_of(cli.read_text(), "ncollapse.cli")}
    assert "ncollapse.commands" in targets


# ----------------------------------------------------------------------------- the checker


def test_a_clean_module_passes() -> None:
    source = "import numpy\nfrom ncollapse.geometry import simplex_etf\nfrom .. import io\n"
    assert violations("ncollapse.metrics.kernels", source) == []
    assert violations("ncollapse.io", "from ncollapse import __version__\n") == []
    assert imports_of("from .. import io\n", "ncollapse.metrics.kernels") == [
        Import("ncollapse.io", 1)]


@pytest.mark.parametrize("module,source,message", [
    ("ncollapse.geometry", "from ncollapse.training import train\n", "is above layer 0"),
    ("ncollapse.metrics.accumulator",
     "def f():\n    from ncollapse.plots import plot_runs\n    return plot_runs\n",
     "layer 4 (readers, figures, integrations) is above layer 1"),
    ("ncollapse.rundir.writer", "import ncollapse.commands.train\n",
     "only cli.py and commands/ may import the commands"),
    ("ncollapse.theory.ufm.model", "from ncollapse.commands.theory import add_common_arguments\n",
     "only cli.py and commands/ may import the commands"),
    ("ncollapse.training.loop", "from ncollapse.theory.central_path import mse_decomposition\n",
     "the training loop must not import the theory lab"),
    ("ncollapse.data.registry", "from .. import collect\n", "is above layer 0"),
    ("ncollapse.io", "from ncollapse import measure\n", "imports ncollapse:"),
    ("ncollapse.io", "from ncollapse import __version__, measure\n", "imports ncollapse:"),
    ("ncollapse.collect", "import importlib\nimportlib.import_module('ncollapse.demo')\n",
     "imports ncollapse.demo"),
    ("ncollapse.models", "if TYPE_CHECKING:\n    from ncollapse.rundir import Run\n",
     "is above layer 0"),
    ("ncollapse.brand_new", "import numpy\n", "not in the layer table"),
    ("ncollapse.plots", "from ncollapse.nowhere import x\n", "not in the layer table"),
])
def test_a_violating_import_fails(module: str, source: str, message: str) -> None:
    problems = violations(module, source)
    assert any(message in p for p in problems), problems


def test_table_covers_each_documented_layer() -> None:
    # a rename in the table must not silently drop a whole layer
    assert sorted(set(LAYERS.values())) == sorted(LAYER_NAMES)
