"""Theory lab: the last layers in isolation, each result checked against its closed form.

Maths only: solvers and closed forms, float64 numpy. Submodules:
:mod:`~ncollapse.theory.ufm` (unconstrained features, CE and MSE: model, closed forms, solvers),
:mod:`~ncollapse.theory.layer_peeled` (norm-constrained layer-peeled model, minority collapse),
:mod:`~ncollapse.theory.central_path` (MSE decomposition and central path),
:mod:`~ncollapse.theory.implicit_bias` (gradient descent vs hard-margin SVM),
:mod:`~ncollapse.theory.last_layer` (training the classifier on collapsed features),
:mod:`~ncollapse.theory._solve` (shared L-BFGS and cross-entropy).
All figures are drawn by :mod:`~ncollapse.theory.figures` (matplotlib ``Figure`` objects); the
command line (``ncollapse theory``) lives in :mod:`ncollapse.commands.theory`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mse_decomposition": "ncollapse.metrics",
}


def __getattr__(name: str) -> Any:
    """Lazily import the public functions of the submodules."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ncollapse.theory' has no attribute {name!r}")


__all__ = list(_EXPORTS)
