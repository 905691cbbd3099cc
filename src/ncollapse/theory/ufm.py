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

import math
import time
from dataclasses import dataclass, field
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
    "gradient_descent_trajectory",
    "gradient_flow",
    "mixon_closed_form",
    "mse_closed_form",
    "objective",
    "objective_and_gradient",
    "solve",
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


def _fun_grad(problem: UFMProblem):
    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        w, h, b = problem.split(x)
        f, gw, gh, gb = objective_and_gradient(problem, w, h, b)
        return f, problem.join(gw, gh, gb)
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
          x0: np.ndarray | None = None) -> UFMSolution:
    """Full-batch L-BFGS from several random inits; returns the best run.

    Each run stops when ‖∇f‖₂ < ``gtol`` (``converged``). ``x0`` (a flat parameter vector,
    see :meth:`UFMProblem.join`) replaces the random init of the first seed (warm start).
    """
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    best: tuple[MinimizeResult, int] | None = None
    per_seed: dict[int, float] = {}
    start = time.perf_counter()
    for k, seed in enumerate(seeds):
        start_x = x0 if (k == 0 and x0 is not None) else _init(problem, seed, init_scale)
        res = minimize_lbfgs(_fun_grad(problem), start_x, gtol=gtol, max_iter=max_iter)
        per_seed[int(seed)] = res.fun
        if best is None or res.fun < best[0].fun - 1e-13 or (
                abs(res.fun - best[0].fun) <= 1e-13 and res.grad_norm < best[0].grad_norm):
            best = (res, int(seed))
    assert best is not None
    res, seed = best
    w, h, b = problem.split(res.x)
    return UFMSolution(problem=problem, weight=w.copy(), features=h.copy(),
                       bias=None if b is None else b.copy(), objective=res.fun,
                       gradient_norm=res.grad_norm, converged=res.converged,
                       iterations=res.iterations, seed=seed,
                       time_s=time.perf_counter() - start, method="L-BFGS",
                       history=res.history, seed_objectives=per_seed)


def gradient_flow(problem: UFMProblem, *, seed: int = 0, init_scale: float = 1e-7,
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
