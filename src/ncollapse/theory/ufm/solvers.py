"""UFM solvers: L-BFGS from random inits, the gradient flow from a small init, plain gradient
descent (recorded, for animations), the comparison with a closed form and the λ sweep."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from ncollapse.metrics import measure
from ncollapse.theory._solve import MinimizeResult, minimize_lbfgs
from ncollapse.theory.ufm.closed_form import ClosedForm, closed_form, orthogonal_frame_error
from ncollapse.theory.ufm.model import UFMProblem, _fun_grad

__all__ = [
    "UFMSolution",
    "compare",
    "gradient_descent_trajectory",
    "gradient_flow",
    "iterate_trace",
    "solution_metrics",
    "solve",
    "sweep",
    "sweep_lambdas",
    "with_lambda",
    "zero_threshold",
]


@dataclass
class UFMSolution:
    """A numerical solution: parameters, objective, final gradient norm, and the solve's trace.

    ``history`` has one ``(objective, gradient_norm)`` per iterate (L-BFGS) or per output
    time (gradient flow, where ``times`` holds the flow times).
    """

    problem: UFMProblem
    weight: np.ndarray
    features: np.ndarray
    bias: np.ndarray | None
    objective: float
    gradient_norm: float
    converged: bool
    iterations: int
    seed: int
    time_s: float
    method: str
    history: list[tuple[float, float]] = field(default_factory=list)
    seed_objectives: dict[int, float] = field(default_factory=dict)
    times: np.ndarray | None = None
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    iterates: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]] = field(
        default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return self.problem.labels


def _init(problem: UFMProblem, seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = scale * rng.standard_normal(problem.num_parameters)
    if problem.bias:
        x[-problem.classes:] = 0.0
    return x


def solve(problem: UFMProblem, *, seeds: tuple[int, ...] | list[int] = (0, 1, 2),
          init_scale: float = 0.3, gtol: float = 1e-10, max_iter: int = 20000,
          x0: np.ndarray | None = None, keep_iterates: int = 0) -> UFMSolution:
    """Full-batch L-BFGS from several random inits; returns the best run.

    Each run stops when ‖∇f‖₂ < ``gtol`` (``converged``). ``x0`` (a flat parameter vector,
    see :meth:`UFMProblem.join`) replaces the random init of the first seed (warm start).
    ``keep_iterates`` > 0 keeps about that many log-spaced iterates of the best run in
    ``UFMSolution.iterates`` as ``(iteration, W, H, b)``.
    """
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    # MSE only: for CE the softmax curvature already differs between blocks and the plain
    # coordinates converge faster (measured)
    scale = math.sqrt(problem.per_class) if problem.loss == "mse" else 1.0
    nw, nh = problem.classes * problem.dim, problem.num_samples * problem.dim

    def _to_scaled(x: np.ndarray) -> np.ndarray:
        y = np.array(x, dtype=np.float64)
        y[nw:nw + nh] /= scale
        return y

    def _from_scaled(y: np.ndarray) -> np.ndarray:
        x = np.array(y, dtype=np.float64)
        x[nw:nw + nh] *= scale
        return x

    best: tuple[MinimizeResult, int, list[np.ndarray]] | None = None
    per_seed: dict[int, float] = {}
    start = time.perf_counter()
    for k, seed in enumerate(seeds):
        start_x = x0 if (k == 0 and x0 is not None) else _init(problem, seed, init_scale)
        rows: list[np.ndarray] = []
        callback = rows.append if keep_iterates > 0 else None
        # MSE: L-BFGS on (W, H/sqrt(n), b): each feature sees 1/N of the loss, W sees n/N of
        # it, so this rescaling equalises the curvature of the two blocks; the gradient in
        # these coordinates is at least as large as the true one (n >= 1), so gtol still holds.
        res = minimize_lbfgs(_fun_grad(problem, scale), _to_scaled(start_x), gtol=gtol,
                             max_iter=max_iter, callback=callback)
        res.x = _from_scaled(res.x)
        rows = [_from_scaled(r) for r in rows]
        per_seed[int(seed)] = res.fun
        if best is None or res.fun < best[0].fun - 1e-13 or (
                abs(res.fun - best[0].fun) <= 1e-13 and res.grad_norm < best[0].grad_norm):
            best = (res, int(seed), rows)
    assert best is not None
    res, seed, rows = best
    iterates = []
    if rows:
        picks = np.unique(np.round(np.geomspace(1, len(rows), keep_iterates)).astype(int) - 1)
        iterates = [(int(k), *problem.split(rows[k])) for k in sorted({0, *picks.tolist()})]
    w, h, b = problem.split(res.x)
    return UFMSolution(problem=problem, weight=w.copy(), features=h.copy(),
                       bias=None if b is None else b.copy(), objective=res.fun,
                       gradient_norm=res.grad_norm, converged=res.converged,
                       iterations=res.iterations, seed=seed,
                       time_s=time.perf_counter() - start, method="L-BFGS",
                       history=res.history, seed_objectives=per_seed, iterates=iterates)


def gradient_flow(problem: UFMProblem, *, seed: int = 0, init_scale: float = 1e-8,
                  t_max: float | None = None, num_times: int = 80, rtol: float = 1e-11,
                  atol: float = 1e-14) -> UFMSolution:
    """Integrate the gradient flow dx/dt = −∇f(x) from a small random init (DOP853).

    The implicit-regularisation answer of the unregularized MSE model [Mix20] is the limit of
    this flow; ``t_max`` defaults to a horizon long enough to escape the init and converge.
    ``snapshots`` hold (time, W, H, b) at ``num_times`` log-spaced times.
    """
    start = time.perf_counter()
    fg = _fun_grad(problem)
    x0 = _init(problem, seed, init_scale)
    if t_max is None:
        # growth rate of the bilinear phase ~ 1/(C·sqrt(n)) for MSE; escape takes log(1/ε)/rate
        rate = 1.0 / (problem.classes * math.sqrt(problem.per_class))
        t_max = (math.log(1.0 / init_scale) + 40.0) / rate
    times = np.unique(np.concatenate([[0.0], np.geomspace(1e-2, t_max, num_times - 1)]))
    sol = solve_ivp(lambda _t, x: -fg(x)[1], (0.0, t_max), x0, method="DOP853",
                    t_eval=times, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"gradient flow integration failed: {sol.message}")
    history: list[tuple[float, float]] = []
    snaps: list[dict[str, Any]] = []
    for j, t in enumerate(sol.t):
        xj = sol.y[:, j]
        f, g = fg(xj)
        history.append((f, float(np.linalg.norm(g))))
        w, h, b = problem.split(xj)
        snaps.append({"time": float(t), "weight": w.copy(), "features": h.copy(),
                      "bias": None if b is None else b.copy()})
    w, h, b = problem.split(sol.y[:, -1])
    f, gnorm = history[-1]
    return UFMSolution(problem=problem, weight=w.copy(), features=h.copy(),
                       bias=None if b is None else b.copy(), objective=f, gradient_norm=gnorm,
                       converged=gnorm < 1e-8, iterations=int(sol.nfev), seed=seed,
                       time_s=time.perf_counter() - start, method="gradient flow (DOP853)",
                       history=history, seed_objectives={seed: f}, times=sol.t,
                       snapshots=snaps)


def gradient_descent_trajectory(*, classes: int, per_class: int, dim: int, loss: str = "ce",
                                lambda_w: float, lambda_h: float, lambda_b: float,
                                bias: bool = True, steps: int, lr: float,
                                record_every: int | None = None, num_records: int = 60,
                                seed: int = 0, init_scale: float = 0.1) -> list[dict[str, Any]]:
    """Plain full-batch gradient descent on the UFM from a small random init, recorded.

    Returns a list of dicts with keys ``step`` (int), ``features`` (N, d) float64, ``labels``
    (N,) int64, ``weight`` (C, d), ``bias`` (C,) or None, and ``objective``, at step 0, at
    about ``num_records`` log-spaced steps (or every ``record_every`` steps) and at ``steps``.
    """
    problem = UFMProblem(classes, per_class, dim, loss=loss, bias=bias, lambda_w=lambda_w,
                         lambda_h=lambda_h, lambda_b=lambda_b)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if record_every is not None:
        if record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {record_every}")
        marks = set(range(0, steps + 1, record_every))
    else:
        if num_records < 2:
            raise ValueError(f"num_records must be >= 2, got {num_records}")
        marks = set(np.unique(np.round(np.geomspace(1, steps, num_records - 1))).astype(int))
        marks.add(0)
    marks.add(steps)
    x = _init(problem, seed, init_scale)
    fg = _fun_grad(problem)
    labels = problem.labels.astype(np.int64)
    out: list[dict[str, Any]] = []
    for step in range(steps + 1):
        f, g = fg(x)
        if not math.isfinite(f):
            raise FloatingPointError(f"gradient descent diverged at step {step} (lr={lr} is too "
                                     "large; lower it)")
        if step in marks:
            w, h, b = problem.split(x)
            out.append({"step": step, "features": h.copy(), "labels": labels,
                        "weight": w.copy(), "bias": None if b is None else b.copy(),
                        "objective": f})
        if step < steps:
            x = x - lr * g
    return out


def compare(solution: UFMSolution, cf: ClosedForm) -> dict[str, float | None]:
    """Rotation-invariant differences between a solution and a closed form.

    Max-abs differences of the Gram matrices WWᵀ, HHᵀ and HWᵀ, of the bias (its centred part
    when λ_b = 0, where any b ∝ 1 is optimal), the objective gap, and the mean squared norms.
    Entries are None where the closed form leaves the matrices undetermined.
    """
    w, h, b = solution.weight, solution.features, solution.bias
    out: dict[str, float | None] = {
        "objective_gap": solution.objective - cf.objective,
        "weight_sq_norm": float(np.mean(np.sum(w * w, axis=1))),
        "feature_sq_norm": float(np.mean(np.sum(h * h, axis=1))),
        "weight_gram_error": None, "feature_gram_error": None, "cross_gram_error": None,
        "bias_error": None,
    }
    if cf.weight is not None and cf.features is not None:
        w0, h0 = cf.weight, cf.features
        out["weight_gram_error"] = float(np.abs(w @ w.T - w0 @ w0.T).max())
        out["feature_gram_error"] = float(np.abs(h @ h.T - h0 @ h0.T).max())
        out["cross_gram_error"] = float(np.abs(h @ w.T - h0 @ w0.T).max())
    if b is not None and cf.bias is not None:
        p = solution.problem
        free_shift = p.loss == "ce" and p.lambda_b == 0
        diff = (b - b.mean()) - (cf.bias - cf.bias.mean()) if free_shift else b - cf.bias
        out["bias_error"] = float(np.abs(diff).max())
    return out


def solution_metrics(w: np.ndarray, h: np.ndarray, b: np.ndarray | None,
                     labels: np.ndarray) -> dict[str, Any] | None:
    """``ncollapse.measure(...).to_dict()``, or None where the metrics are undefined (H = 0)."""
    if not np.any(h):
        return None
    try:
        return measure(h, labels, weight=w, bias=b).to_dict()
    except ValueError:
        return None


def zero_threshold(problem: UFMProblem) -> float:
    """The λ (= λ_W = λ_H) above which the minimizer is W = H = 0.

    1/(C·sqrt(n)) for CE, 1 for MSE (s = λ reaches 1).
    """
    if problem.loss == "ce":
        return 1.0 / (problem.classes * math.sqrt(problem.per_class))
    return 1.0


def sweep_lambdas(problem: UFMProblem, points: int) -> np.ndarray:
    """``points`` λ values: log-spaced from threshold/30 to just below it, then two above it."""
    thr = zero_threshold(problem)
    if points < 3:
        return np.geomspace(thr / 30, thr * 2, points)
    return np.concatenate([np.geomspace(thr / 30, thr * 0.97, points - 2), [thr * 1.3, thr * 2]])


def with_lambda(problem: UFMProblem, lam: float) -> UFMProblem:
    """``problem`` with λ_W = λ_H = λ (and λ_b = λ when it has a bias)."""
    return UFMProblem(problem.classes, problem.per_class, problem.dim, loss=problem.loss,
                      bias=problem.bias, lambda_w=float(lam), lambda_h=float(lam),
                      lambda_b=float(lam) if problem.bias else 0.0)


def sweep(problem: UFMProblem, lambdas: np.ndarray, *, seed: int = 0,
          gtol: float = 1e-10) -> list[dict[str, float | None]]:
    """Solve with λ_W = λ_H (= λ_b with a bias) = λ for each λ, warm-started along λ.

    Each row: ``lambda``, ``objective``, mean ``weight_sq_norm`` ‖w_c‖² and ``feature_sq_norm``
    ‖h_i‖², ``gradient_norm``, and the closed form's ``closed_form_objective``,
    ``closed_form_weight_sq_norm``, ``closed_form_feature_sq_norm`` (None where none applies).
    """
    rows: list[dict[str, float | None]] = []
    x0 = None
    for lam in lambdas:
        p = with_lambda(problem, lam)
        sol = solve(p, seeds=(seed,), gtol=gtol, x0=x0)
        x0 = p.join(sol.weight, sol.features, sol.bias)
        if not np.any(np.abs(x0) > 1e-6):  # past the threshold: restart the next from random
            x0 = None
        cf = closed_form(p)
        rows.append({"lambda": float(lam), "objective": sol.objective,
                     "weight_sq_norm": float(np.mean(np.sum(sol.weight**2, axis=1))),
                     "feature_sq_norm": float(np.mean(np.sum(sol.features**2, axis=1))),
                     "gradient_norm": sol.gradient_norm,
                     "closed_form_objective": None if cf is None else cf.objective,
                     "closed_form_weight_sq_norm": None if cf is None else cf.weight_sq_norm,
                     "closed_form_feature_sq_norm": None if cf is None else cf.feature_sq_norm})
    return rows


def iterate_trace(solution: UFMSolution) -> list[dict[str, Any]]:
    """NC1, W's ETF Gram error, self-duality and W's orthogonal-frame error at the kept iterates
    (L-BFGS) or snapshots (gradient flow, where the row also has ``time`` and ``bias_error``
    max|b − 1/C|)."""
    p = solution.problem
    out = []
    if solution.snapshots:
        items = [(s["time"], s["weight"], s["features"], s["bias"])
                 for s in solution.snapshots[1:]]
    else:
        items = [(float(k), w, h, b) for k, w, h, b in solution.iterates]
    for x, w, h, b in items:
        m = solution_metrics(w, h, b, p.labels) or {}
        row = {"time" if solution.snapshots else "iteration": x, "nc1": m.get("nc1"),
               "etf_error_weights": m.get("etf_error_weights"),
               "self_duality": m.get("self_duality"),
               "orthogonal_error_weights": orthogonal_frame_error(w) if np.any(w) else None,
               "weight_sq_norm": float(np.mean(np.sum(w * w, axis=1)))}
        if b is not None:
            row["bias_error"] = float(np.abs(b - 1.0 / p.classes).max())
        out.append(row)
    return out
