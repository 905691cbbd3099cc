"""Unconstrained features model (UFM): the features are free variables next to the classifier.

Objectives (N = C·n samples, n per class, features H as the (N, d) rows h_i, classifier W (C, d),
bias b (C,), one-hot targets Y (N, C)); see ``docs/theory/ufm.md``:

- ``loss="ce"`` [Zhu21]: (1/N)·Σ_i CE(W h_i + b, y_i) + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖².
- ``loss="mse"`` [Tir22, Mix20]: (1/2N)‖H Wᵀ + 1bᵀ − Y‖² + λ_W/(2C)‖W‖² + λ_H/(2N)‖H‖²
  + λ_b/(2C)‖b‖²; bias-free with weight decay is Tirer & Bruna's model, with bias and all λ = 0
  it is Mixon et al.'s unregularized model, solved as the gradient flow from a small init.

The ``bias`` term is present only when ``bias=True``. Everything is float64 numpy.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from ncollapse.geometry import canonical_etf
from ncollapse.theory._solve import MinimizeResult, cross_entropy, minimize_lbfgs

__all__ = [
    "HELP",
    "ClosedForm",
    "UFMProblem",
    "UFMSolution",
    "ce_closed_form",
    "closed_form",
    "compare",
    "configure_parser",
    "gradient_descent_trajectory",
    "gradient_flow",
    "mixon_closed_form",
    "mse_closed_form",
    "objective",
    "objective_and_gradient",
    "orthogonal_frame_error",
    "run_cli",
    "solve",
    "sweep",
]

HELP = ("unconstrained features model: cross-entropy (Zhu et al. 2021) or MSE (Tirer & Bruna 2022, "
        "Mixon et al. 2020), solver vs closed-form minimizer")

LOSSES = ("ce", "mse")


# ----------------------------------------------------------------------------- problem


@dataclass(frozen=True)
class UFMProblem:
    """One UFM instance: sizes, loss, bias switch and the three weight-decay strengths."""

    classes: int
    per_class: int
    dim: int
    loss: str = "ce"
    bias: bool = True
    lambda_w: float = 5e-3
    lambda_h: float = 5e-3
    lambda_b: float = 5e-3

    def __post_init__(self) -> None:
        for name in ("classes", "per_class", "dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if self.classes < 2:
            raise ValueError(f"classes must be >= 2, got {self.classes}")
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("lambda_w", "lambda_h", "lambda_b"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")

    @property
    def num_samples(self) -> int:
        return self.classes * self.per_class

    @property
    def labels(self) -> np.ndarray:
        """Class-major labels: sample i belongs to class i // per_class."""
        return np.repeat(np.arange(self.classes), self.per_class)

    @property
    def num_parameters(self) -> int:
        c, d = self.classes, self.dim
        return c * d + self.num_samples * d + (c if self.bias else 0)

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Flat parameter vector -> (W (C,d), H (N,d), b (C,) or None)."""
        c, d, n = self.classes, self.dim, self.num_samples
        w = x[: c * d].reshape(c, d)
        h = x[c * d: c * d + n * d].reshape(n, d)
        b = x[c * d + n * d:] if self.bias else None
        return w, h, b

    def join(self, w: np.ndarray, h: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        parts = [np.ravel(w), np.ravel(h)]
        if self.bias:
            parts.append(np.zeros(self.classes) if b is None else np.ravel(b))
        return np.concatenate(parts).astype(np.float64)


def objective_and_gradient(problem: UFMProblem, weight: np.ndarray, features: np.ndarray,
                           bias: np.ndarray | None = None
                           ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray | None]:
    """The UFM objective and its gradients ``(f, ∂f/∂W, ∂f/∂H, ∂f/∂b or None)`` in float64."""
    p = problem
    w = np.asarray(weight, dtype=np.float64)
    h = np.asarray(features, dtype=np.float64)
    if w.shape != (p.classes, p.dim) or h.shape != (p.num_samples, p.dim):
        raise ValueError(f"expected W {(p.classes, p.dim)} and H {(p.num_samples, p.dim)}, "
                         f"got {w.shape} and {h.shape}")
    b = None
    if p.bias:
        b = np.zeros(p.classes) if bias is None else np.asarray(bias, dtype=np.float64)
    logits = h @ w.T
    if b is not None:
        logits = logits + b
    n_samples = p.num_samples
    if p.loss == "ce":
        data, dz = cross_entropy(logits, p.labels)
        cw, ch, cb = p.lambda_w, p.lambda_h, p.lambda_b
    else:
        resid = logits.copy()
        resid[np.arange(n_samples), p.labels] -= 1.0
        data = 0.5 * float(np.sum(resid * resid)) / n_samples
        dz = resid / n_samples
        cw, ch, cb = p.lambda_w / p.classes, p.lambda_h / n_samples, p.lambda_b / p.classes
    f = data + 0.5 * cw * float(np.sum(w * w)) + 0.5 * ch * float(np.sum(h * h))
    gw = dz.T @ h + cw * w
    gh = dz @ w + ch * h
    gb = None
    if b is not None:
        f += 0.5 * cb * float(b @ b)
        gb = dz.sum(axis=0) + cb * b
    return f, gw, gh, gb


def objective(problem: UFMProblem, weight: np.ndarray, features: np.ndarray,
              bias: np.ndarray | None = None) -> float:
    """The UFM objective value (see the module docstring)."""
    return objective_and_gradient(problem, weight, features, bias)[0]


def _fun_grad(problem: UFMProblem, feature_scale: float = 1.0):
    """f and ∇f on the flat vector (W, H/feature_scale, b): a diagonal preconditioner."""
    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        w, h, b = problem.split(x)
        f, gw, gh, gb = objective_and_gradient(problem, w, feature_scale * h, b)
        return f, problem.join(gw, feature_scale * gh, gb)
    return fg


# ----------------------------------------------------------------------------- closed forms


@dataclass
class ClosedForm:
    """A closed-form global minimizer (up to rotation) and its objective value.

    ``weight_sq_norm``/``feature_sq_norm`` are ‖w_c‖² and ‖h_{c,i}‖² (the same for every c, i);
    ``weight``/``features``/``bias`` realise one minimizer (None where it is not unique up to
    rotation). ``regime`` is "collapse" (nonzero minimizer) or "zero".
    """

    objective: float
    weight_sq_norm: float
    feature_sq_norm: float
    regime: str
    weight: np.ndarray | None
    features: np.ndarray | None
    bias: np.ndarray | None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "weight_sq_norm": self.weight_sq_norm,
                "feature_sq_norm": self.feature_sq_norm, "regime": self.regime, **self.extra}


def _need_positive(**kw: float) -> None:
    for name, v in kw.items():
        if not v > 0:
            raise ValueError(f"the closed form needs {name} > 0 (with {name} = 0 the infimum is "
                             f"not attained: the norms run off), got {v}")


def ce_closed_form(classes: int, per_class: int, dim: int, lambda_w: float, lambda_h: float,
                   *, bias: bool = True) -> ClosedForm:
    """Global minimizer of the CE UFM [Zhu21], derived in ``docs/theory/ufm.md``.

    With β = C·sqrt(n λ_W λ_H): t* = ((C−1)/C)·log(1 + C(1−β)/β) when β < 1, else t* = 0 (the
    minimizer is W = H = 0). ‖w_c‖² = t*·sqrt(nλ_H/λ_W), h_{c,i} = sqrt(λ_W/(nλ_H))·w_c, W a
    simplex ETF, b = 0, objective log(1 + (C−1)e^{−Ct*/(C−1)}) + β t*. Needs d ≥ C−1.
    The value does not depend on λ_b (b = 0 is optimal; with λ_b = 0 any b ∝ 1 is).
    """
    c, n = int(classes), int(per_class)
    if dim < c - 1:
        raise ValueError(f"the CE closed form needs dim >= classes-1 = {c - 1}, got dim={dim}")
    _need_positive(lambda_w=lambda_w, lambda_h=lambda_h)
    beta = c * math.sqrt(n * lambda_w * lambda_h)
    t = (c - 1) / c * math.log1p(c * (1.0 - beta) / beta) if beta < 1.0 else 0.0
    value = math.log1p((c - 1) * math.exp(-c * t / (c - 1))) + beta * t
    rho = t * math.sqrt(n * lambda_h / lambda_w)
    kappa = math.sqrt(lambda_w / (n * lambda_h))
    w = canonical_etf(c, dim, scale=math.sqrt(rho)) if rho > 0 else np.zeros((c, dim))
    h = kappa * np.repeat(w, n, axis=0)
    return ClosedForm(objective=value, weight_sq_norm=rho, feature_sq_norm=kappa**2 * rho,
                      regime="collapse" if beta < 1.0 else "zero", weight=w, features=h,
                      bias=np.zeros(c) if bias else None,
                      extra={"beta": beta, "logit_margin": c * t / (c - 1),
                             "threshold_sqrt_n_lw_lh": 1.0 / c,
                             "sqrt_n_lw_lh": math.sqrt(n * lambda_w * lambda_h)})


def mse_closed_form(classes: int, per_class: int, dim: int, lambda_w: float,
                    lambda_h: float) -> ClosedForm:
    """Global minimizer of the bias-free MSE UFM with weight decay [Tir22].

    With s = sqrt(λ_Wλ_H) < 1 and k = min(d, C): class means with H̄ᵀH̄ = ρ·I, ρ =
    (1 − s)·sqrt(λ_W/λ_H), WWᵀ = (1 − s)·sqrt(λ_H/λ_W)·I, W H̄ = (1 − s) I; objective
    (C − k(1 − s)²)/(2C). For s ≥ 1 the minimizer is 0 with objective 1/2. For d < C the
    minimizer is unique only up to the choice of a rank-d subspace: ``weight`` etc. are None.
    """
    c, n = int(classes), int(per_class)
    _need_positive(lambda_w=lambda_w, lambda_h=lambda_h)
    del n  # the minimizer does not depend on n in this normalisation
    s = math.sqrt(lambda_w * lambda_h)
    k = min(dim, c)
    shrink = max(1.0 - s, 0.0)
    value = (c - k * shrink**2) / (2.0 * c)
    rho_h = shrink * math.sqrt(lambda_w / lambda_h)
    rho_w = shrink * math.sqrt(lambda_h / lambda_w)
    w = h = None
    if dim >= c or shrink == 0.0:
        eye = np.zeros((c, dim))
        eye[np.arange(min(c, dim)), np.arange(min(c, dim))] = 1.0
        w = math.sqrt(rho_w) * eye
        h = np.repeat(math.sqrt(rho_h) * eye, per_class, axis=0)
    return ClosedForm(objective=value, weight_sq_norm=rho_w, feature_sq_norm=rho_h,
                      regime="collapse" if shrink > 0 else "zero", weight=w, features=h,
                      bias=None, extra={"s": s, "rank": float(k if shrink > 0 else 0)})


def mixon_closed_form(classes: int, per_class: int, dim: int) -> ClosedForm:
    """Limit of the gradient flow from a small init on the unregularized MSE UFM with bias [Mix20].

    Zero loss with b = 1/C, h_{c,i} = w_c/sqrt(n), WWᵀ = sqrt(n)·(I − 11ᵀ/C) (the balance
    WᵀW = HᵀH that the flow conserves from a near-zero start fixes the scale); needs d ≥ C−1.
    """
    c, n = int(classes), int(per_class)
    if dim < c - 1:
        raise ValueError(f"zero loss needs dim >= classes-1 = {c - 1}, got dim={dim}")
    rho = math.sqrt(n) * (c - 1) / c
    w = canonical_etf(c, dim, scale=math.sqrt(rho))
    h = np.repeat(w, n, axis=0) / math.sqrt(n)
    return ClosedForm(objective=0.0, weight_sq_norm=rho, feature_sq_norm=rho / n,
                      regime="collapse", weight=w, features=h, bias=np.full(c, 1.0 / c))


def closed_form(problem: UFMProblem) -> ClosedForm | None:
    """The closed form that applies to ``problem``, or None where none is known."""
    p = problem
    if p.loss == "ce":
        if p.dim < p.classes - 1 or p.lambda_w <= 0 or p.lambda_h <= 0:
            return None
        return ce_closed_form(p.classes, p.per_class, p.dim, p.lambda_w, p.lambda_h, bias=p.bias)
    if not p.bias:
        if p.lambda_w <= 0 or p.lambda_h <= 0:
            return None
        return mse_closed_form(p.classes, p.per_class, p.dim, p.lambda_w, p.lambda_h)
    if p.lambda_w == 0 and p.lambda_h == 0 and p.lambda_b == 0 and p.dim >= p.classes - 1:
        return mixon_closed_form(p.classes, p.per_class, p.dim)
    return None


# ----------------------------------------------------------------------------- solvers


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


# ----------------------------------------------------------------------------- comparisons


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


def _metrics(w: np.ndarray, h: np.ndarray, b: np.ndarray | None,
             labels: np.ndarray) -> dict[str, Any] | None:
    """``ncollapse.measure(...).to_dict()``, or None where the metrics are undefined (H = 0)."""
    from ncollapse import measure

    if not np.any(h):
        return None
    try:
        return measure(h, labels, weight=w, bias=b).to_dict()
    except ValueError:
        return None


# ----------------------------------------------------------------------------- CLI


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``ncollapse theory ufm`` (common ones via ``add_common_arguments``)."""
    from ncollapse.commands.theory import add_common_arguments

    add_common_arguments(p, classes=10, per_class=50, dim=16)
    # None = "the model's default": 5e-3, or 0 for the unregularized MSE-with-bias model
    p.set_defaults(lambda_w=None, lambda_h=None, lambda_b=None)
    g = p.add_argument_group("ufm")
    g.add_argument("--loss", choices=LOSSES, default="ce", help="cross-entropy or MSE")
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="learn a bias b (default: yes for CE, no for MSE; MSE with bias and "
                        "no weight decay is Mixon et al.'s model, solved as a gradient flow)")
    g.add_argument("--restarts", type=int, default=3,
                   help="number of random inits for L-BFGS (seeds seed, seed+1, ...)")
    g.add_argument("--gtol", type=float, default=1e-10, help="stop when the gradient norm < this")
    g.add_argument("--sweep-points", type=int, default=9,
                   help="lambda values in the norm-vs-lambda sweep figure (0: no sweep)")


def _resolve(args: argparse.Namespace) -> UFMProblem:
    bias = args.bias if args.bias is not None else args.loss == "ce"
    unregularized = args.loss == "mse" and bias
    default = 0.0 if unregularized else 5e-3
    lw = default if args.lambda_w is None else args.lambda_w
    lh = default if args.lambda_h is None else args.lambda_h
    lb = default if args.lambda_b is None else args.lambda_b
    if not bias:
        if args.lambda_b not in (None, 0.0):
            raise ValueError("--lambda-b has no effect without a bias; drop it or pass --bias")
        lb = 0.0
    if args.restarts < 1:
        raise ValueError(f"--restarts must be >= 1, got {args.restarts}")
    return UFMProblem(args.classes, args.per_class, args.dim, loss=args.loss, bias=bias,
                      lambda_w=lw, lambda_h=lh, lambda_b=lb)


def _model_name(p: UFMProblem) -> str:
    if p.loss == "ce":
        return "CE with weight decay [Zhu et al. 2021]"
    if not p.bias:
        return "MSE, bias-free, weight decay [Tirer & Bruna 2022]"
    if p.lambda_w == p.lambda_h == p.lambda_b == 0:
        return "MSE with bias, unregularized, gradient flow from small init [Mixon et al. 2020]"
    return "MSE with bias and weight decay (no closed form)"


def sweep(problem: UFMProblem, lambdas: np.ndarray, *, seed: int = 0,
          gtol: float = 1e-10) -> list[dict[str, float]]:
    """Solve with λ_W = λ_H (= λ_b with a bias) = λ for each λ; mean ‖w_c‖², ‖h_i‖², objective."""
    rows = []
    x0 = None
    for lam in lambdas:
        p = UFMProblem(problem.classes, problem.per_class, problem.dim, loss=problem.loss,
                       bias=problem.bias, lambda_w=float(lam), lambda_h=float(lam),
                       lambda_b=float(lam) if problem.bias else 0.0)
        sol = solve(p, seeds=(seed,), gtol=gtol, x0=x0)
        x0 = p.join(sol.weight, sol.features, sol.bias)
        if not np.any(np.abs(x0) > 1e-6):  # past the threshold: restart the next from random
            x0 = None
        rows.append({"lambda": float(lam), "objective": sol.objective,
                     "weight_sq_norm": float(np.mean(np.sum(sol.weight**2, axis=1))),
                     "feature_sq_norm": float(np.mean(np.sum(sol.features**2, axis=1))),
                     "gradient_norm": sol.gradient_norm})
    return rows


def _closed_norms(problem: UFMProblem, lam: float) -> tuple[float, float]:
    if problem.loss == "ce":
        cf = ce_closed_form(problem.classes, problem.per_class, problem.dim, lam, lam)
    else:
        cf = mse_closed_form(problem.classes, problem.per_class, problem.dim, lam, lam)
    return cf.weight_sq_norm, cf.feature_sq_norm


def _trace(sol: UFMSolution) -> list[dict[str, Any]]:
    """NC1, W's ETF Gram error and self-duality at the kept iterates."""
    out = []
    for k, w, h, b in sol.iterates:
        m = _metrics(w, h, b, sol.problem.labels) or {}
        out.append({"iteration": k, "nc1": m.get("nc1"),
                    "etf_error_weights": m.get("etf_error_weights"),
                    "self_duality": m.get("self_duality"),
                    "orthogonal_error_weights": orthogonal_frame_error(w)})
    return out


def orthogonal_frame_error(weight: np.ndarray) -> float:
    """‖G/‖G‖_F − I/sqrt(C)‖_F with G = WWᵀ: 0 exactly when the rows of W are orthogonal with
    equal norms (the bias-free MSE minimizer [Tir22], which is not a simplex ETF)."""
    g = weight @ weight.T
    norm = np.linalg.norm(g)
    if norm == 0:
        return float("nan")
    c = g.shape[0]
    return float(np.linalg.norm(g / norm - np.eye(c) / math.sqrt(c)))


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """``ncollapse theory ufm``: solve, compare with the closed form, plot, return the JSON."""
    problem = _resolve(args)
    cf = closed_form(problem)
    mixon = problem.loss == "mse" and problem.bias and cf is not None
    seeds = tuple(range(args.seed, args.seed + args.restarts))
    if mixon:
        sol = gradient_flow(problem, seed=args.seed)
    else:
        sol = solve(problem, seeds=seeds, gtol=args.gtol,
                    keep_iterates=0 if args.no_figures else 30)
    metrics = _metrics(sol.weight, sol.features, sol.bias, problem.labels)
    comparison = compare(sol, cf) if cf is not None else None
    rows = []
    if not mixon and cf is not None and args.sweep_points > 0 and not args.no_figures:
        rows = sweep(problem, _sweep_lambdas(problem, args.sweep_points), seed=args.seed,
                     gtol=args.gtol)
    figures: list[str] = []
    if not args.no_figures:
        figures.append(str(_figure(problem, sol, cf, rows, Path(args.out))))
    p = problem
    summary = [
        f"UFM: {_model_name(p)}",
        f"  C={p.classes} n={p.per_class} d={p.dim} lambda_W={p.lambda_w:g} "
        f"lambda_H={p.lambda_h:g}" + (f" lambda_b={p.lambda_b:g}" if p.bias else " (no bias)"),
        f"  solver: {sol.method}, seeds {list(sol.seed_objectives)}, best seed {sol.seed}, "
        f"{sol.iterations} {'RHS evaluations' if mixon else 'iterations'}, {sol.time_s:.2f} s",
        f"  objective            {sol.objective:.15g}",
        f"  closed form          {cf.objective:.15g}" if cf is not None
        else "  closed form          " + _no_closed_form_reason(p),
        f"  gradient norm        {sol.gradient_norm:.3g}"
        + ("" if sol.gradient_norm < 1e-8 else "  (NOT below 1e-8)"),
    ]
    if cf is not None and comparison is not None:
        summary.append(f"  |objective - closed form| {abs(comparison['objective_gap']):.3g}; "
                       f"regime: {cf.regime}")
        summary.append(f"  mean ||w_c||^2 {comparison['weight_sq_norm']:.10g} "
                       f"(closed form {cf.weight_sq_norm:.10g}); mean ||h_i||^2 "
                       f"{comparison['feature_sq_norm']:.10g} (closed form "
                       f"{cf.feature_sq_norm:.10g})")
        grams = [f"{k}={v:.2g}" for k, v in comparison.items()
                 if k.endswith("_error") and v is not None]
        if grams:
            summary.append("  max |difference| vs closed form: " + ", ".join(grams))
    if metrics is not None:
        keys = ("nc1", "equinorm_weights", "equiangular_weights", "etf_error_weights",
                "self_duality")
        summary.append("  NC metrics: " + ", ".join(
            f"{k}={metrics[k]:.3g}" for k in keys if metrics.get(k) is not None))
        if p.loss == "mse" and not p.bias:
            summary.append(f"  bias-free MSE: W is an orthogonal frame, not a simplex ETF; "
                           f"orthogonal-frame error of W {orthogonal_frame_error(sol.weight):.3g}"
                           " (so etf_error_weights and self_duality stay away from 0)")
    else:
        summary.append("  NC metrics: undefined (the solution is H = 0)")
    return {
        "model": "ufm", "loss": p.loss, "bias": p.bias, "classes": p.classes,
        "per_class": p.per_class, "dim": p.dim, "lambda_w": p.lambda_w, "lambda_h": p.lambda_h,
        "lambda_b": p.lambda_b if p.bias else None,
        "objective": sol.objective,
        "closed_form_objective": cf.objective if cf is not None else None,
        "metrics": metrics,
        "gradient_norm": sol.gradient_norm, "converged": sol.gradient_norm < 1e-8,
        "orthogonal_error_weights": orthogonal_frame_error(sol.weight) if np.any(sol.weight)
        else None,
        "solver": sol.method, "iterations": sol.iterations, "time_s": sol.time_s,
        "seed_objectives": {str(k): v for k, v in sol.seed_objectives.items()},
        "closed_form": cf.to_dict() if cf is not None else None,
        "comparison": comparison, "sweep": rows,
        "summary": summary, "figures": figures,
    }


def _no_closed_form_reason(p: UFMProblem) -> str:
    if p.loss == "ce" and p.dim < p.classes - 1:
        return f"none: the simplex ETF needs d >= C-1 = {p.classes - 1}"
    if (p.loss == "ce" or not p.bias) and (p.lambda_w <= 0 or p.lambda_h <= 0):
        return "none: with lambda_W or lambda_H = 0 the infimum is not attained"
    if p.loss == "mse" and p.bias and p.dim < p.classes - 1:
        return f"none: zero loss needs d >= C-1 = {p.classes - 1}"
    return "none known (MSE with bias is covered only without weight decay [Mix20])"


def _sweep_lambdas(problem: UFMProblem, points: int) -> np.ndarray:
    if problem.loss == "ce":
        thr = 1.0 / (problem.classes * math.sqrt(problem.per_class))
    else:
        thr = 1.0
    if points < 3:
        return np.geomspace(thr / 30, thr * 2, points)
    return np.concatenate([np.geomspace(thr / 30, thr * 0.97, points - 2), [thr * 1.3, thr * 2]])


def _figure(problem: UFMProblem, sol: UFMSolution, cf: ClosedForm | None,
            rows: list[dict[str, float]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = problem
    mixon = p.loss == "mse" and p.bias and cf is not None
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.9))
    f = np.array([r[0] for r in sol.history])
    g = np.array([r[1] for r in sol.history])
    ax = axes[0]
    if mixon:
        t = np.asarray(sol.times)
        keep = t > 0
        ax.loglog(t[keep], np.maximum(f[keep], 1e-30), label="loss (closed form: 0)")
        ax.loglog(t[keep], g[keep], label="gradient norm")
        ax.set_xlabel("flow time t")
        ax.set_title("gradient flow from init scale 1e-8")
    else:
        it = np.arange(len(f))
        if cf is not None:
            ax.semilogy(it, np.maximum(f - cf.objective, 1e-16),
                        label="objective − closed form")
        else:
            ax.semilogy(it, f, label="objective")
        ax.semilogy(it, g, label="gradient norm")
        ax.axhline(1e-8, color="0.6", ls=":", lw=1)
        ax.set_xlabel("L-BFGS iteration")
        ax.set_title(f"L-BFGS (best of {len(sol.seed_objectives)} seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    if mixon:
        snaps = sol.snapshots[1:]
        ts = [s["time"] for s in snaps]
        nc1, etf, berr = [], [], []
        for s in snaps:
            m = _metrics(s["weight"], s["features"], s["bias"], p.labels) or {}
            nc1.append(m.get("nc1") or np.nan)
            etf.append(m.get("etf_error_weights") or np.nan)
            berr.append(float(np.abs(s["bias"] - 1.0 / p.classes).max()))
        ax.loglog(ts, nc1, label="NC1")
        ax.loglog(ts, etf, label="ETF Gram error of W")
        ax.loglog(ts, berr, label="max |b − 1/C|")
        ax.set_xlabel("flow time t")
    else:
        tr = _trace(sol)
        its = [r["iteration"] for r in tr]
        if p.loss == "ce":
            keys = (("nc1", "NC1"), ("etf_error_weights", "ETF Gram error of W"),
                    ("self_duality", "NC3 self-duality"))
        else:
            keys = (("nc1", "NC1"), ("orthogonal_error_weights", "orthogonal-frame error of W"))
        for key, label in keys:
            ax.semilogy(its, [np.nan if r[key] is None else max(r[key], 1e-30) for r in tr],
                        "o-", ms=3, label=label)
        ax.set_xlabel("L-BFGS iteration")
    ax.set_title("collapse along the solve")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[2]
    if mixon:
        ts = [s["time"] for s in sol.snapshots[1:]]
        wn = [float(np.mean(np.sum(s["weight"] ** 2, axis=1))) for s in sol.snapshots[1:]]
        ax.loglog(ts, wn, label="mean ‖w_c‖² (flow)")
        ax.axhline(cf.weight_sq_norm, color="k", ls="--", lw=1,
                   label="closed form √n (C−1)/C")
        ax.set_xlabel("flow time t")
        ax.set_title("scale fixed by the balance WᵀW = HᵀH")
    elif rows:
        lam = np.array([r["lambda"] for r in rows])
        thr = 1.0 / (p.classes * math.sqrt(p.per_class)) if p.loss == "ce" else 1.0
        fine = np.unique(np.concatenate([np.geomspace(lam.min(), lam.max(), 300),
                                         thr * (1 - np.geomspace(1e-6, 0.5, 100))]))
        norms = np.array([_closed_norms(p, x) for x in fine])
        cw, ch = norms[:, 0], norms[:, 1]
        ax.plot(fine, cw, "C0-", lw=1.5, label="‖w_c‖² closed form")
        ax.plot(fine, ch, "C1-", lw=1.5, label="‖h_i‖² closed form")
        ax.plot(lam, [r["weight_sq_norm"] for r in rows], "C0o", ms=5, label="‖w_c‖² L-BFGS")
        ax.plot(lam, [r["feature_sq_norm"] for r in rows], "C1s", ms=5, label="‖h_i‖² L-BFGS")
        ax.axvline(thr, color="0.4", ls=":", label="zero threshold")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("λ (= λ_W = λ_H" + (" = λ_b)" if p.bias else ")"))
        ax.set_title("norms vs weight decay")
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no closed form / no sweep", ha="center", va="center")
    if mixon or rows:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"UFM — {_model_name(p)};  C={p.classes}, n={p.per_class}, d={p.dim}",
                 fontsize=11)
    fig.tight_layout()
    name = f"theory-ufm-{p.loss}{'-bias' if p.bias else '-nobias'}.png"
    path = out / name
    from ncollapse.io import atomic_savefig

    atomic_savefig(fig, path, format="png", dpi=90)
    plt.close(fig)
    return path
