"""Shared float64 solver utilities for the theory lab.

Small, stable API (other theory modules import it):

- :func:`cross_entropy` — mean softmax cross-entropy of logits and its gradient, float64.
- :func:`minimize_lbfgs` — full-batch L-BFGS on a flat float64 vector with an analytic gradient,
  run until the gradient's Euclidean norm is below ``gtol`` (restarting the L-BFGS memory when
  the line search stalls), returning a :class:`MinimizeResult` with the per-iteration history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

__all__ = ["MinimizeResult", "cross_entropy", "minimize_lbfgs"]

FunGrad = Callable[[np.ndarray], tuple[float, np.ndarray]]


def cross_entropy(logits: np.ndarray, labels: np.ndarray,
                  weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean cross-entropy (1/N)·Σ_i [logsumexp(z_i) − z_{i,y_i}] and its gradient (w.r.t. logits).

    ``logits`` is (N, C) float, ``labels`` (N,) ints in [0, C); the gradient is
    (softmax − onehot)/N. With ``weights`` (N,) the mean is replaced by the weighted sum
    Σ_i π_i·CE_i (gradient rows scaled by π_i).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits must be (N, C) and labels (N,), got {z.shape} and {y.shape}")
    n = z.shape[0]
    pi = None if weights is None else np.asarray(weights, dtype=np.float64)
    if pi is not None and pi.shape != (n,):
        raise ValueError(f"weights must be ({n},) to match the logits, got {pi.shape}")
    lse = logsumexp(z, axis=1)
    rows = np.arange(n)
    per_row = lse - z[rows, y]
    grad = np.exp(z - lse[:, None])
    grad[rows, y] -= 1.0
    if pi is None:
        grad /= n
        return float(np.mean(per_row)), grad
    grad *= pi[:, None]
    return float(pi @ per_row), grad


@dataclass
class MinimizeResult:
    """Outcome of :func:`minimize_lbfgs`.

    ``history`` holds one ``(objective, gradient_norm)`` pair per accepted iterate, the
    starting point first.
    """

    x: np.ndarray
    fun: float
    grad_norm: float
    iterations: int
    converged: bool
    message: str
    time_s: float
    history: list[tuple[float, float]] = field(default_factory=list)


def minimize_lbfgs(fun_grad: FunGrad, x0: np.ndarray, *, gtol: float = 1e-10,
                   max_iter: int = 20000, max_restarts: int = 20,
                   memory: int = 30,
                   callback: Callable[[np.ndarray], None] | None = None) -> MinimizeResult:
    """Minimise a smooth function by L-BFGS until ‖∇f‖₂ < ``gtol``.

    ``fun_grad(x)`` returns ``(f(x), ∇f(x))`` for a flat float64 ``x``. Uses scipy's L-BFGS-B
    (no bounds); whenever it stops early (line search at machine precision) the memory is
    reset and the run continues from the best point, at most ``max_restarts`` times.
    ``converged`` says whether the gradient-norm target was reached. ``callback(x)``, if given,
    is called with the start point and every accepted iterate.
    """
    if gtol <= 0:
        raise ValueError(f"gtol must be > 0, got {gtol}")
    x = np.array(x0, dtype=np.float64).ravel()
    start = time.perf_counter()
    history: list[tuple[float, float]] = []

    cache: dict[str, object] = {}

    def wrapped(v: np.ndarray) -> tuple[float, np.ndarray]:
        last = cache.get("x")
        if isinstance(last, np.ndarray) and np.array_equal(last, v):
            return cache["f"], cache["g"]  # type: ignore[return-value]
        f, g = fun_grad(v)
        out = float(f), np.asarray(g, dtype=np.float64).ravel()
        cache.update(x=np.array(v, copy=True), f=out[0], g=out[1])
        return out

    f, g = wrapped(x)
    gnorm = float(np.linalg.norm(g))
    history.append((f, gnorm))
    if callback is not None:
        callback(x.copy())
    iterations = 0
    message = "converged at start"

    def on_iterate(v: np.ndarray) -> None:
        fv, gv = wrapped(v)
        history.append((fv, float(np.linalg.norm(gv))))
        if callback is not None:
            callback(np.array(v, copy=True))

    for _ in range(max_restarts + 1):
        if gnorm < gtol or iterations >= max_iter:
            break
        res = minimize(wrapped, x, jac=True, method="L-BFGS-B", callback=on_iterate,
                       options={"maxiter": max_iter - iterations, "maxcor": memory,
                                "gtol": 0.0, "ftol": 0.0, "maxfun": 10 * max_iter,
                                "maxls": 50})
        iterations += int(res.nit)
        message = str(res.message)
        f_new, g_new = wrapped(res.x)
        g_new_norm = float(np.linalg.norm(g_new))
        if f_new <= f or g_new_norm < gnorm:
            progressed = g_new_norm < 0.5 * gnorm or f_new < f
            x, f, g, gnorm = res.x, f_new, g_new, g_new_norm
            if not progressed:
                break
        else:
            break
    return MinimizeResult(x=x, fun=f, grad_norm=gnorm, iterations=iterations,
                          converged=gnorm < gtol, message=message,
                          time_s=time.perf_counter() - start, history=history)
