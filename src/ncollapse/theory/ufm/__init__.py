"""Unconstrained features model (UFM): the features are free variables next to the classifier.

:mod:`~ncollapse.theory.ufm.model` (the instance and its objective),
:mod:`~ncollapse.theory.ufm.closed_form` (closed-form minimizers of each variant),
:mod:`~ncollapse.theory.ufm.solvers` (L-BFGS, gradient flow, gradient descent, comparison, sweep).
Everything is float64 numpy; see ``docs/theory/ufm.md``.
"""

from __future__ import annotations

from ncollapse.theory.ufm.closed_form import (
    ClosedForm,
    ce_closed_form,
    closed_form,
    mixon_closed_form,
    mse_bias_closed_form,
    mse_closed_form,
    orthogonal_frame_error,
    why_no_closed_form,
)
from ncollapse.theory.ufm.model import LOSSES, UFMProblem, objective, objective_and_gradient
from ncollapse.theory.ufm.solvers import (
    UFMSolution,
    compare,
    gradient_descent_trajectory,
    gradient_flow,
    iterate_trace,
    solution_metrics,
    solve,
    sweep,
    sweep_lambdas,
    with_lambda,
    zero_threshold,
)

__all__ = [
    "LOSSES",
    "ClosedForm",
    "UFMProblem",
    "UFMSolution",
    "ce_closed_form",
    "closed_form",
    "compare",
    "gradient_descent_trajectory",
    "gradient_flow",
    "iterate_trace",
    "mixon_closed_form",
    "mse_bias_closed_form",
    "mse_closed_form",
    "objective",
    "objective_and_gradient",
    "orthogonal_frame_error",
    "solution_metrics",
    "solve",
    "sweep",
    "sweep_lambdas",
    "why_no_closed_form",
    "with_lambda",
    "zero_threshold",
]
