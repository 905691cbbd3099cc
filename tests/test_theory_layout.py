"""The theory lab's layout at run time: solvers load neither matplotlib nor the CLI, and the
figures are drawn without pyplot (no global figure state, no backend switching)."""

from __future__ import annotations

import subprocess
import sys

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
