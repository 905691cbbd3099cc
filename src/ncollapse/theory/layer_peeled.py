"""Norm-constrained layer-peeled model [Fan21]: balanced ETF and minority collapse.

    minimise   (1/N)·Σ_i CE(W h_i, y_i)                      (no bias)
    subject to (1/C)·Σ_c ‖w_c‖² ≤ E_W,   (1/C)·Σ_c (1/n_c)·Σ_{i∈c} ‖h_i‖² ≤ E_H.

Two independent solvers (see ``docs/theory/layer-peeled.md``):

- L-BFGS on the constraint surface: both constraints are active at the optimum, so W and H are
  parametrised as scaled unit vectors, W = sqrt(C·E_W)·U/‖U‖, H = sqrt(C·E_H)·V/‖V‖_ω with
  ‖V‖_ω² = Σ_i ‖v_i‖²/n_{y_i}; works on the per-sample problem or on the class means.
- The convex SDP of Fang et al. on the Gram matrix Z of [H̄; W] (class means H̄, which is optimal
  by Jensen), solved with cvxpy/Clarabel: an exact reformulation when d ≥ 2C, a lower bound else.

Classes 0..C_A−1 are the majority (n_A samples each), C_A..C−1 the minority (n_B each).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ncollapse.theory._solve import cross_entropy, minimize_lbfgs

__all__ = [
    "LayerPeeledProblem",
    "LayerPeeledSolution",
    "balanced_closed_form",
    "VANISHED_NORM_RATIO",
    "collapse_threshold",
    "minority_cosine",
    "solve",
    "sdp_agreement",
    "solve_sdp",
    "sweep_ratio",
]

@dataclass(frozen=True)
class LayerPeeledProblem:
    """Sizes and budgets: ``counts[c]`` samples in class c, feature dimension ``dim``."""

    counts: tuple[float, ...]
    dim: int
    energy_w: float = 1.0
    energy_h: float = 1.0

    def __post_init__(self) -> None:
        if len(self.counts) < 2:
            raise ValueError(f"need at least 2 classes, got counts={self.counts}")
        if any(not (c > 0 and math.isfinite(c)) for c in self.counts):
            raise ValueError(f"every class count must be a finite number > 0, got {self.counts}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) \
                or self.dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {self.dim!r}")
        for name in ("energy_w", "energy_h"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number > 0, got {v}")

    @classmethod
    def imbalanced(cls, *, majority: int, minority: int, ratio: float, minority_count: float = 1,
                   dim: int, energy_w: float = 1.0, energy_h: float = 1.0
                   ) -> LayerPeeledProblem:
        """C_A = ``majority`` classes with R·n_B samples, C_B = ``minority`` with n_B each."""
        if majority < 1 or minority < 1:
            raise ValueError(f"need >= 1 majority and >= 1 minority class, got {majority}, "
                             f"{minority}")
        if not ratio >= 1:
            raise ValueError(f"the imbalance ratio R = n_A/n_B must be >= 1, got {ratio}")
        counts = (float(ratio * minority_count),) * majority + (float(minority_count),) * minority
        return cls(counts=counts, dim=dim, energy_w=energy_w, energy_h=energy_h)

    @property
    def classes(self) -> int:
        return len(self.counts)

    @property
    def weights(self) -> np.ndarray:
        """Class weights π_c = n_c/N of the class-mean problem."""
        n = np.asarray(self.counts, dtype=np.float64)
        return n / n.sum()

    def labels(self) -> np.ndarray:
        """Per-sample labels (needs integer counts)."""
        counts = [int(round(c)) for c in self.counts]
        if any(abs(c - r) > 1e-9 for c, r in zip(counts, self.counts, strict=True)):
            raise ValueError(f"the per-sample problem needs integer class counts, got "
                             f"{self.counts}; pass an integer ratio * per-class count")
        return np.repeat(np.arange(self.classes), counts)


def balanced_closed_form(classes: int, energy_w: float, energy_h: float) -> float:
    """Optimal value with balanced classes (d ≥ C−1): W a simplex ETF with ‖w_c‖² = E_W and
    h_{c,i} = sqrt(E_H/E_W)·w_c, so the own logit is sqrt(E_W E_H), every other one
    −sqrt(E_W E_H)/(C−1): log(1 + (C−1)·exp(−C·sqrt(E_W E_H)/(C−1)))."""
    c = int(classes)
    return math.log1p((c - 1) * math.exp(-c * math.sqrt(energy_w * energy_h) / (c - 1)))


@dataclass
class LayerPeeledSolution:
    """Solver output: W (C, d), features (N, d) or class means (C, d), objective, KKT residual."""

    problem: LayerPeeledProblem
    weight: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    objective: float
    kkt_residual: float
    gradient_norm: float
    converged: bool
    iterations: int
    seed: int
    time_s: float
    per_sample: bool
    seed_objectives: dict[int, float] = field(default_factory=dict)


def _scale(v: np.ndarray, omega: np.ndarray, budget: float) -> tuple[np.ndarray, float]:
    norm = math.sqrt(float(np.sum(omega[:, None] * v * v)))
    if norm == 0.0:
        raise FloatingPointError("a parameter block collapsed to 0; use another seed")
    return math.sqrt(budget) * v / norm, norm


def _objective_terms(problem: LayerPeeledProblem, per_sample: bool):
    c = problem.classes
    if per_sample:
        labels = problem.labels()
        omega_h = 1.0 / np.asarray(problem.counts)[labels]
    else:
        labels = np.arange(c)
        omega_h = np.ones(c)
    pi = None if per_sample else problem.weights
    omega_w = np.ones(c)
    return labels, omega_h, omega_w, pi


def _loss(w: np.ndarray, h: np.ndarray, labels: np.ndarray,
          pi: np.ndarray | None) -> tuple[float, np.ndarray, np.ndarray]:
    """Objective and gradients w.r.t. W and H (per sample, or class means weighted by π)."""
    f, dz = cross_entropy(h @ w.T, labels, pi)
    return f, dz.T @ h, dz @ w


def _fun_grad(problem: LayerPeeledProblem, per_sample: bool):
    labels, omega_h, omega_w, pi = _objective_terms(problem, per_sample)
    c, d = problem.classes, problem.dim
    budget_w, budget_h = c * problem.energy_w, c * problem.energy_h
    nw = c * d

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        u = x[:nw].reshape(c, d)
        v = x[nw:].reshape(-1, d)
        w, nu = _scale(u, omega_w, budget_w)
        h, nv = _scale(v, omega_h, budget_h)
        f, gw, gh = _loss(w, h, labels, pi)
        # chain rule through x -> sqrt(B)·x/‖x‖_ω
        gu = (math.sqrt(budget_w) / nu) * (gw - (np.sum(gw * u) / nu**2) * omega_w[:, None] * u)
        gv = (math.sqrt(budget_h) / nv) * (gh - (np.sum(gh * v) / nv**2) * omega_h[:, None] * v)
        return f, np.concatenate([gu.ravel(), gv.ravel()])

    return fg, labels, omega_h, pi


def _kkt_residual(gw: np.ndarray, gh: np.ndarray, w: np.ndarray, h: np.ndarray,
                  omega_h: np.ndarray) -> float:
    """Norm of the objective's gradient minus its component normal to the (active) constraints."""
    rw = gw - (np.sum(gw * w) / np.sum(w * w)) * w
    wh = omega_h[:, None] * h
    rh = gh - (np.sum(gh * h) / np.sum(wh * h)) * wh
    return float(math.sqrt(np.sum(rw * rw) + np.sum(rh * rh)))


def solve(problem: LayerPeeledProblem, *, per_sample: bool = True,
          seeds: tuple[int, ...] | list[int] = (0, 1, 2), gtol: float = 1e-10,
          max_iter: int = 20000, x0: np.ndarray | None = None) -> LayerPeeledSolution:
    """L-BFGS on the constraint surface from several random inits; the best run.

    ``per_sample=False`` solves the class-mean problem (weights π_c = n_c/N; any positive,
    even non-integer, counts). ``x0`` = concatenated (W, H) warm start for the first seed.
    """
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    fg, labels, omega_h, pi = _fun_grad(problem, per_sample)
    c, d = problem.classes, problem.dim
    rows = len(labels)
    start = time.perf_counter()
    best = None
    per_seed: dict[int, float] = {}
    for k, seed in enumerate(seeds):
        if k == 0 and x0 is not None:
            x_init = np.asarray(x0, dtype=np.float64).ravel()
        else:
            x_init = np.random.default_rng(seed).standard_normal((c + rows) * d)
        res = minimize_lbfgs(fg, x_init, gtol=gtol, max_iter=max_iter)
        per_seed[int(seed)] = res.fun
        if best is None or res.fun < best[0].fun - 1e-13:
            best = (res, int(seed))
    assert best is not None
    res, seed = best
    w, _ = _scale(res.x[: c * d].reshape(c, d), np.ones(c), c * problem.energy_w)
    h, _ = _scale(res.x[c * d:].reshape(rows, d), omega_h, c * problem.energy_h)
    f, gw, gh = _loss(w, h, labels, pi)
    kkt = _kkt_residual(gw, gh, w, h, omega_h)
    return LayerPeeledSolution(problem=problem, weight=w, features=h, labels=labels,
                               objective=f, kkt_residual=kkt, gradient_norm=res.grad_norm,
                               converged=res.converged, iterations=res.iterations, seed=seed,
                               time_s=time.perf_counter() - start, per_sample=per_sample,
                               seed_objectives=per_seed)


@dataclass
class SDPSolution:
    """The convex program's optimum: value, Gram blocks W Wᵀ, H̄ H̄ᵀ, W H̄ᵀ, solver status."""

    objective: float
    weight_gram: np.ndarray
    mean_gram: np.ndarray
    cross_gram: np.ndarray
    status: str
    time_s: float


def solve_sdp(problem: LayerPeeledProblem, *, tol: float = 1e-9) -> SDPSolution:
    """Fang et al.'s convex reformulation on Z = [H̄; W][H̄; W]ᵀ ⪰ 0, solved by Clarabel.

    minimise Σ_c π_c [logsumexp_j Z_{C+j,c} − Z_{C+c,c}] s.t. tr Z_HH ≤ C·E_H, tr Z_WW ≤ C·E_W.
    Exact when d ≥ 2C (every such Z is a Gram matrix in R^d); a lower bound otherwise.
    """
    import cvxpy as cp  # heavy (about a second to import): loaded only when an SDP is solved

    c = problem.classes
    pi = problem.weights
    z = cp.Variable((2 * c, 2 * c), PSD=True)
    terms = [pi[k] * (cp.log_sum_exp(z[c:, k]) - z[c + k, k]) for k in range(c)]
    cons = [cp.trace(z[:c, :c]) <= c * problem.energy_h,
            cp.trace(z[c:, c:]) <= c * problem.energy_w]
    prob = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms))), cons)
    start = time.perf_counter()
    with warnings.catch_warnings():  # "optimal_inaccurate" is reported in ``status`` instead
        warnings.simplefilter("ignore", UserWarning)
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol,
                   tol_ktratio=1e-8, max_iter=500)
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"the SDP solver failed: status {prob.status}")
    zv = np.asarray(z.value)
    return SDPSolution(objective=float(prob.value), weight_gram=zv[c:, c:], mean_gram=zv[:c, :c],
                       cross_gram=zv[c:, :c], status=str(prob.status),
                       time_s=time.perf_counter() - start)


def minority_cosine(weight_or_gram: np.ndarray, minority: list[int] | np.ndarray, *,
                    gram: bool = False) -> float:
    """Mean pairwise cosine between the minority classifiers w_c (c in ``minority``).

    NaN when a minority classifier has (numerically) vanished, ‖w_c‖ < 1e-6·max_c′‖w_c′‖:
    its direction is then undefined (the strongest form of minority collapse, w_c = 0).
    """
    g = np.asarray(weight_or_gram, dtype=np.float64)
    if not gram:
        g = g @ g.T
    idx = np.asarray(minority)
    if len(idx) < 2:
        raise ValueError("need at least 2 minority classes to measure their angle")
    diag = np.sqrt(np.clip(np.diag(g), 0.0, None))
    if np.any(diag[idx] < 1e-6 * diag.max()):
        return float("nan")
    cos = g / np.outer(diag, diag)
    sub = cos[np.ix_(idx, idx)]
    return float(sub[~np.eye(len(idx), dtype=bool)].mean())


VANISHED_NORM_RATIO = 1e-6
"""Minority rows count as vanished (w_c = 0, the strongest minority collapse) below this ratio
of mean minority to mean majority classifier norm; their directions, and any cosine between
them, are then numerical noise."""


def _minority_state(problem: LayerPeeledProblem, majority: int, *, seeds: tuple[int, ...],
                    gtol: float, x0: np.ndarray | None = None
                    ) -> tuple[LayerPeeledSolution, float, float]:
    """Class-mean solve; (solution, minority cosine or NaN if vanished, minority norm ratio)."""
    sol = solve(problem, per_sample=False, seeds=seeds, gtol=gtol, x0=x0)
    minority_idx = list(range(majority, problem.classes))
    norms = np.linalg.norm(sol.weight, axis=1)
    ratio = float(norms[minority_idx].mean() / norms[:majority].mean())
    cos = float("nan") if ratio < VANISHED_NORM_RATIO else minority_cosine(sol.weight,
                                                                           minority_idx)
    return sol, cos, ratio


def sweep_ratio(*, majority: int, minority: int, dim: int, energy_w: float, energy_h: float,
                ratios: np.ndarray | list[float], seeds: tuple[int, ...] = (0, 1),
                sdp: bool = True, gtol: float = 1e-10) -> list[dict[str, Any]]:
    """Minority cosine, norm ratio and objective vs R (class-mean problem, warm-started along R).

    Each row: ``ratio``, ``objective``, ``minority_cosine`` (None when the minority rows have
    vanished, see :data:`VANISHED_NORM_RATIO`), ``minority_norm_ratio``,
    ``minority_vanished``, ``kkt_residual``; with ``sdp`` also ``sdp_objective`` and
    ``sdp_minority_cosine`` (None when vanished: the SDP's Gram entries for w_c ≈ 0 are at its
    tolerance and their cosines are noise, kept as ``sdp_minority_cosine_noise``).
    """
    rows: list[dict[str, Any]] = []
    x0 = None
    minority_idx = list(range(majority, majority + minority))
    for r in ratios:
        p = LayerPeeledProblem.imbalanced(majority=majority, minority=minority, ratio=float(r),
                                          dim=dim, energy_w=energy_w, energy_h=energy_h)
        sol, cos, norm_ratio = _minority_state(p, majority, seeds=seeds, gtol=gtol, x0=x0)
        x0 = np.concatenate([sol.weight.ravel(), sol.features.ravel()])
        vanished = norm_ratio < VANISHED_NORM_RATIO
        row: dict[str, Any] = {"ratio": float(r), "objective": sol.objective,
                               "minority_cosine": None if vanished else cos,
                               "minority_norm_ratio": norm_ratio,
                               "minority_vanished": vanished, "kkt_residual": sol.kkt_residual}
        if sdp:
            s = solve_sdp(p)
            sdp_cos = minority_cosine(s.weight_gram, minority_idx, gram=True)
            row["sdp_objective"] = s.objective
            row["sdp_minority_cosine"] = None if vanished else sdp_cos
            if vanished:
                row["sdp_minority_cosine_noise"] = sdp_cos
        rows.append(row)
    return rows


def sdp_agreement(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Largest |L-BFGS − SDP| over sweep rows: objective, and minority cosine (rows where the
    minority rows have not vanished), with the R at which each occurs."""
    both = [r for r in rows if r.get("sdp_objective") is not None]
    if not both:
        return {"max_objective_gap": None, "objective_gap_ratio": None,
                "max_cosine_gap": None, "cosine_gap_ratio": None}
    obj = max(both, key=lambda r: abs(r["objective"] - r["sdp_objective"]))
    with_cos = [r for r in both if r.get("sdp_minority_cosine") is not None
                and r.get("minority_cosine") is not None]
    cos = max(with_cos, key=lambda r: abs(r["minority_cosine"] - r["sdp_minority_cosine"]),
              default=None)
    return {"max_objective_gap": abs(obj["objective"] - obj["sdp_objective"]),
            "objective_gap_ratio": obj["ratio"],
            "max_cosine_gap": None if cos is None
            else abs(cos["minority_cosine"] - cos["sdp_minority_cosine"]),
            "cosine_gap_ratio": None if cos is None else cos["ratio"]}


def collapse_threshold(*, majority: int, minority: int, dim: int, energy_w: float,
                       energy_h: float, ratio_max: float = 1e5, rtol: float = 0.01,
                       cos_tol: float = 1e-6, seeds: tuple[int, ...] = (0, 1),
                       gtol: float = 1e-10) -> dict[str, Any]:
    """The minority-collapse threshold in R, by bisection on log R.

    Collapse at R means: the minority classifiers are parallel (mean pairwise cosine
    ≥ 1 − ``cos_tol``) or have vanished. Bisection from [1, ``ratio_max``] (R = 1 is the
    balanced ETF) until hi/lo ≤ 1 + ``rtol``; each R is an independent class-mean solve from
    ``seeds``. Returns ``bracket`` (lo, hi) with no collapse at lo and collapse at hi (None when
    there is none up to ``ratio_max``), ``cosine_lo``/``cosine_hi``, ``norm_ratio_lo``/
    ``norm_ratio_hi``, ``solves``; and, the same way, ``vanish_bracket`` for the R above which
    the minority rows vanish (None when they do not up to ``ratio_max``).
    """
    if not (ratio_max > 1 and rtol > 0 and 0 < cos_tol < 1):
        raise ValueError(f"need ratio_max > 1, rtol > 0 and 0 < cos_tol < 1, got {ratio_max}, "
                         f"{rtol}, {cos_tol}")
    cache: dict[float, tuple[float, float]] = {}

    def state(r: float) -> tuple[float, float]:
        if r not in cache:
            p = LayerPeeledProblem.imbalanced(majority=majority, minority=minority, ratio=r,
                                              dim=dim, energy_w=energy_w, energy_h=energy_h)
            cache[r] = _minority_state(p, majority, seeds=seeds, gtol=gtol)[1:]
        return cache[r]

    def collapsed(r: float) -> bool:
        cos, norm_ratio = state(r)
        return norm_ratio < VANISHED_NORM_RATIO or cos >= 1.0 - cos_tol

    def vanished(r: float) -> bool:
        return state(r)[1] < VANISHED_NORM_RATIO

    def bisect(pred: Any, lo: float = 1.0) -> tuple[float, float] | None:
        hi = float(ratio_max)
        if pred(lo) or not pred(hi):
            return None
        while hi / lo > 1.0 + rtol:
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if pred(mid) else (mid, hi)
        return lo, hi

    bracket = bisect(collapsed)
    out: dict[str, Any] = {"energy_w": energy_w, "energy_h": energy_h, "bracket": bracket,
                           "cos_tol": cos_tol, "rtol": rtol, "ratio_max": ratio_max}
    if bracket is not None:
        out.update(cosine_lo=state(bracket[0])[0], cosine_hi=state(bracket[1])[0],
                   norm_ratio_lo=state(bracket[0])[1], norm_ratio_hi=state(bracket[1])[1])
    # vanished rows count as collapsed, so the rows vanish at or above the collapse threshold
    out["vanish_bracket"] = None if bracket is None else bisect(vanished, bracket[0])
    out["solves"] = len(cache)
    return out
