"""The theory lab's layout at run time: solvers load neither matplotlib nor the CLI, and the
figures are drawn without pyplot (no global figure state, no backend switching)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ncollapse.cli import main
from ncollapse.commands.theory import SUBCOMMANDS

OPTIONAL_PATHS = ("--out", "--json", "--run")

SCRIPT = """
import sys
import ncollapse.theory.ufm, ncollapse.theory.layer_peeled, ncollapse.theory.central_path
import ncollapse.theory.implicit_bias, ncollapse.theory.last_layer
loaded = [m for m in ("matplotlib", "ncollapse.commands", "ncollapse.theory.figures")
          if m in sys.modules]
assert not loaded, f"theory solvers loaded {loaded}"
from ncollapse.cli import main
assert main(["theory", "ufm", "--classes", "3", "--per-class", "2", "--dim", "3",
             "--sweep-points", "0", "--restarts", "1", "--out", sys.argv[1]]) == 0
assert "matplotlib.pyplot" not in sys.modules, "a theory figure went through pyplot"
"""


def test_solvers_are_maths_only_and_figures_avoid_pyplot(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "theory-ufm-ce-bias.png").read_bytes()[:4] == b"\x89PNG"


def test_help_states_every_default(capsys) -> None:
    """Every `ncollapse theory MODEL --help` flag that takes a value says its default (or, for
    an unset weight decay, what unset means for that model); never "default: None"."""
    for model in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exc:
            main(["theory", model, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "None" not in out, model
        # one entry per flag: a line "  --flag ..." and its deeper-indented continuation lines
        entries = re.split(r"\n(?=  -)", out.split("options:", 1)[1])
        checked = 0
        for entry in entries:
            head = re.match(r"\s*(?:-\w, )?(--[a-z-]+)(?: ([A-Z_]+))?", entry)
            if head is None or head.group(2) is None or head.group(1) in OPTIONAL_PATHS:
                continue  # switches, and optional paths (nothing to state when absent)
            text = " ".join(entry.split())
            assert "default" in text or "not used" in text, (model, text)
            checked += 1
        assert checked >= 6, model
        assert re.search(r"number of classes C \(default: \d+\)", " ".join(out.split()))
