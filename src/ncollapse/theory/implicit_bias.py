"""Implicit bias of gradient descent on separable data (Soudry et al., JMLR 2018).

Gradient descent on the logistic loss (binary, w ∈ R^d) or the softmax cross-entropy
(multiclass, W ∈ R^{K×d}), no bias, from w(0) = 0 with a fixed step η < 2/β (β the
smoothness constant), on linearly separable data: the loss → 0 like 1/t, ‖w(t)‖ grows like
log t and w(t)/‖w(t)‖ → the hard-margin SVM direction ŵ/‖ŵ‖, slowly (gap ~ 1/log t):
precisely w(t) = ŵ·log t + ρ(t) with ρ bounded, where ŵ solves

    binary:      min ½‖w‖²        s.t.  y_n wᵀx_n ≥ 1
    multiclass:  min ½Σ_k‖w_k‖²   s.t.  (w_{y_n} − w_k)ᵀx_n ≥ 1 for all k ≠ y_n  (Crammer–Singer).

Hence the slope of ‖w(t)‖ against ln t tends to ‖ŵ‖ (= 1/margin), and gap·ln t stays bounded.
The SVMs are solved as quadratic programs with cvxpy (Clarabel), then polished on the
active set (an exact KKT solve) to machine precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls
from scipy.special import expit
from tqdm import tqdm

from ncollapse import validation as V
from ncollapse.geometry import simplex_etf
from ncollapse.metrics import measure

__all__ = [
    "GDTrajectory",
    "SVMResult",
    "collapsed_data",
    "crammer_singer_svm",
    "direction_gap",
    "fit_log_slopes",
    "gd_cross_entropy",
    "gd_logistic",
    "hard_margin_svm",
    "noise_regimes",
    "separable_binary_data",
]

# ---------------------------------------------------------------------------- inputs


def _binary_signs(labels: Any, n: int) -> np.ndarray:
    y = V.as_float64(labels, "labels", 1)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the data, got {y.shape}")
    if not np.all(np.equal(np.mod(y, 1), 0)):
        raise TypeError("labels must be integers")
    values = set(np.unique(y).tolist())
    if values <= {-1, 1}:
        return y.astype(np.float64)
    if values <= {0, 1}:
        return 2.0 * y - 1.0
    raise ValueError(
        f"binary labels must be in {{-1, +1}} or {{0, 1}}, got values {sorted(values)}"
    )


# ---------------------------------------------------------------------------- the SVMs


@dataclass
class SVMResult:
    """A hard-margin SVM solution.

    ``weight``: (d,) binary or (K, d) multiclass; ``bias``: float or None; ``dual``: the
    Lagrange multipliers α ≥ 0 of the margin constraints (one per constraint row);
    ``margins``: the constraint values (≥ 1, = 1 on the active set); ``objective``: ½‖ŵ‖²;
    ``qp_objective``: the QP solver's value before polishing; ``solver``: its name;
    ``polished``: whether the active-set KKT solve was accepted.
    """

    weight: np.ndarray
    bias: float | None
    dual: np.ndarray
    margins: np.ndarray
    objective: float
    qp_objective: float
    solver: str
    polished: bool


def _svm_qp(a: np.ndarray, b: np.ndarray | None, solver: str | None
            ) -> tuple[np.ndarray, float | None, np.ndarray, float, str]:
    """min ½‖v‖² s.t. A v + b·B ≥ 1 (B a column, b free) by cvxpy; returns v, b, α, value."""
    import cvxpy as cp  # heavy (about a second to import): loaded only when an SVM is solved

    v = cp.Variable(a.shape[1])
    expr = a @ v
    bias = None
    if b is not None:
        bias = cp.Variable()
        expr = expr + bias * b
    cons = [expr >= 1]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(v)), cons)
    names = [solver] if solver else ["CLARABEL", "OSQP"]
    installed = set(cp.installed_solvers())
    last_error: Exception | None = None
    for name in names:
        if name not in installed:
            continue
        try:
            prob.solve(solver=name)
        except cp.error.SolverError as exc:  # pragma: no cover - solver failure path
            last_error = exc
            continue
        if prob.status in ("infeasible", "infeasible_inaccurate"):
            raise ValueError(
                "the data are not linearly separable (the hard-margin SVM is infeasible); "
                "use separable data, e.g. lower the noise"
            )
        if prob.status in ("optimal", "optimal_inaccurate"):
            alpha = np.maximum(np.asarray(cons[0].dual_value, dtype=np.float64).ravel(), 0.0)
            bval = None if bias is None else float(bias.value)
            return np.asarray(v.value, dtype=np.float64), bval, alpha, float(prob.value), name
    raise RuntimeError(f"no QP solver succeeded (tried {names}; installed {sorted(installed)}): "
                       f"{last_error}")


def _polish(a: np.ndarray, b: np.ndarray | None, v: np.ndarray, bias: float | None,
            alpha: np.ndarray) -> tuple[np.ndarray, float | None, np.ndarray] | None:
    """Exact KKT point on a guessed active set S: v = A_Sᵀα, A_S v + b·B_S = 1, α ≥ 0
    (and B_Sᵀα = 0 with an intercept), all other margins ≥ 1.

    S = constraints whose QP margin is within ``tol`` of 1, for a few tolerances; α ≥ 0 is
    found by non-negative least squares (robust to degenerate active sets), then refined by
    an exact solve on its support. Returns None (keep the QP answer) if no guess checks out.
    """
    margins = a @ v + (0.0 if b is None else bias * b)
    for tol in (1e-6, 1e-7, 1e-8, 1e-5, 1e-4):
        active = np.flatnonzero(margins < 1.0 + tol)
        if active.size == 0:
            continue
        found = _kkt_on(a, b, active, nnls)
        if found is not None:
            return found
    return None


def _kkt_on(a: np.ndarray, b: np.ndarray | None, active: np.ndarray, nnls: Any
            ) -> tuple[np.ndarray, float | None, np.ndarray] | None:
    a_s = a[active]
    k = active.size
    gram = a_s @ a_s.T
    if b is None:
        alpha_s, _ = nnls(gram, np.ones(k), maxiter=50 * k)
        new_bias = None
    else:
        bs = b[active]
        mat = np.zeros((k + 1, k + 2))
        mat[:k, :k] = gram
        mat[:k, k] = bs
        mat[:k, k + 1] = -bs
        mat[k, :k] = bs
        sol, _ = nnls(mat, np.concatenate([np.ones(k), [0.0]]), maxiter=50 * k)
        alpha_s, new_bias = sol[:k], float(sol[k] - sol[k + 1])
    # refine on the support (exact when its constraint rows are independent)
    support = alpha_s > 0
    if support.any():
        sub = gram[np.ix_(support, support)]
        if b is None:
            ref = np.linalg.lstsq(sub, np.ones(int(support.sum())), rcond=None)[0]
            ref_bias = None
        else:
            m = int(support.sum())
            kkt = np.zeros((m + 1, m + 1))
            kkt[:m, :m] = sub
            kkt[:m, m] = b[active][support]
            kkt[m, :m] = b[active][support]
            sol = np.linalg.lstsq(kkt, np.concatenate([np.ones(m), [0.0]]), rcond=None)[0]
            ref, ref_bias = sol[:m], float(sol[m])
        if ref.min() > 0:
            alpha_s = np.zeros(k)
            alpha_s[support] = ref
            new_bias = ref_bias
    new_v = a_s.T @ alpha_s
    new_margins = a @ new_v + (0.0 if b is None else new_bias * b)
    if (np.abs(new_margins[active][alpha_s > 0] - 1.0).max(initial=0.0) > 1e-10
            or new_margins.min() < 1.0 - 1e-10):
        return None
    full_alpha = np.zeros(a.shape[0])
    full_alpha[active] = alpha_s
    return new_v, new_bias, full_alpha


def _solve_svm(a: np.ndarray, b: np.ndarray | None, solver: str | None, polish: bool
               ) -> tuple[Any, ...]:
    v, bias, alpha, qp_value, name = _svm_qp(a, b, solver)
    polished = False
    if polish:
        refined = _polish(a, b, v, bias, alpha)
        if refined is not None:
            v, bias, alpha = refined
            polished = True
    margins = a @ v + (0.0 if b is None else bias * b)
    return v, bias, alpha, margins, 0.5 * float(v @ v), qp_value, name, polished


def hard_margin_svm(x: Any, labels: Any, *, intercept: bool = False, solver: str | None = None,
                    polish: bool = True) -> SVMResult:
    """Binary hard-margin SVM: min ½‖w‖² s.t. y_n(wᵀx_n + b) ≥ 1 (b = 0 unless ``intercept``).

    ``labels`` in {−1, +1} or {0, 1}. The intercept, when fitted, is not penalised (as in
    sklearn's SVC). Raises ValueError when the data are not separable.
    """
    xs = V.as_float64(x, "x", 2)
    y = _binary_signs(labels, xs.shape[0])
    a = y[:, None] * xs
    v, bias, alpha, margins, obj, qp, name, pol = _solve_svm(a, y if intercept else None,
                                                             solver, polish)
    return SVMResult(v, bias, alpha, margins, obj, qp, name, pol)


def _cs_constraints(xs: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows a_{n,j} of the Crammer–Singer constraints ⟨a, vec W⟩ ≥ 1 (j ≠ y_n), and their (n, j)."""
    n, d = xs.shape
    pairs = np.array([(i, j) for i in range(n) for j in range(k) if j != y[i]], dtype=np.int64)
    a = np.zeros((pairs.shape[0], k, d))
    rows = np.arange(pairs.shape[0])
    a[rows, y[pairs[:, 0]]] = xs[pairs[:, 0]]
    a[rows, pairs[:, 1]] -= xs[pairs[:, 0]]
    return a.reshape(pairs.shape[0], k * d), pairs


def crammer_singer_svm(x: Any, labels: Any, num_classes: int | None = None, *,
                       solver: str | None = None, polish: bool = True) -> SVMResult:
    """Multiclass hard-margin SVM: min ½Σ‖w_k‖² s.t. (w_{y_n} − w_k)ᵀx_n ≥ 1, k ≠ y_n.

    ``weight`` is (K, d); ``dual`` and ``margins`` are (N, K) with NaN at k = y_n.
    """
    xs = V.as_float64(x, "x", 2)
    y, k = V.as_int_labels(labels, xs.shape[0], num_classes)
    if k < 2:
        raise ValueError(f"the multiclass SVM needs K >= 2 classes, got {k}")
    a, pairs = _cs_constraints(xs, y, k)
    v, _, alpha, margins, obj, qp, name, pol = _solve_svm(a, None, solver, polish)
    dual = np.full((xs.shape[0], k), np.nan)
    marg = np.full((xs.shape[0], k), np.nan)
    dual[pairs[:, 0], pairs[:, 1]] = alpha
    marg[pairs[:, 0], pairs[:, 1]] = margins
    return SVMResult(v.reshape(k, xs.shape[1]), None, dual, marg, obj, qp, name, pol)


# ---------------------------------------------------------------------------- gradient descent


@dataclass
class GDTrajectory:
    """Recorded gradient-descent iterates: ``steps`` (T,), ``weights`` (T, d) or (T, K, d),
    ``loss`` (T,), the step size ``lr`` and the smoothness bound ``smoothness`` it used."""

    steps: np.ndarray
    weights: np.ndarray
    loss: np.ndarray
    lr: float
    smoothness: float


def _record_steps(steps: int, num_records: int) -> np.ndarray:
    """0, ``num_records`` log-spaced steps up to ``steps``, and every power of 10 below it."""
    decades = 10 ** np.arange(int(np.log10(max(steps, 1))) + 1)
    return np.unique(np.concatenate([[0], np.geomspace(1, steps, num_records).astype(np.int64),
                                     decades[decades <= steps]]))


def gd_logistic(x: Any, labels: Any, *, steps: int = 100_000, lr_scale: float = 1.0,
                num_records: int = 120, progress: bool = False) -> GDTrajectory:
    """GD on L(w) = (1/N)Σ log(1 + exp(−y_n wᵀx_n)) from w = 0, step η = lr_scale/β.

    β = λ_max(XᵀX)/(4N) bounds the Hessian, so lr_scale < 2 is the stable range of [Sou18].
    Iterates are recorded at ``num_records`` log-spaced steps.
    """
    xs = V.as_float64(x, "x", 2)
    y = _binary_signs(labels, xs.shape[0])
    if not 0 < lr_scale < 2:
        raise ValueError(f"lr_scale must be in (0, 2) for gradient descent to be stable, "
                         f"got {lr_scale}")
    a = y[:, None] * xs
    n = a.shape[0]
    beta = float(np.linalg.norm(a, 2) ** 2) / (4.0 * n)
    eta = lr_scale / beta
    record = _record_steps(steps, num_records)
    w = np.zeros(a.shape[1])
    ws, losses = [], []
    j = 0
    it = _progress(steps, progress, "GD logistic")
    scaled = a * (eta / n)
    for t in range(steps + 1):
        m = a @ w
        if t == record[j]:
            ws.append(w.copy())
            losses.append(float(np.mean(np.logaddexp(0.0, -m))))
            j += 1
            if t == steps:
                break
        w += expit(-m) @ scaled
        if it is not None and (t + 1) % 1000 == 0:
            it.update(1000)
    if it is not None:
        it.close()
    return GDTrajectory(record, np.array(ws), np.array(losses), eta, beta)


def _ce_grad_logits(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample CE loss and (softmax − onehot), accurate when the margins are large."""
    n = z.shape[0]
    rows = np.arange(n)
    top = z.max(axis=1, keepdims=True)
    e = np.exp(z - top)
    tot = e.sum(axis=1, keepdims=True)
    p = e / tot
    # loss_n = log Σ_k exp(z_k − z_y) = (top − z_y) + log(tot); when y is the argmax, use
    # log1p of the off-argmax mass so tiny losses keep their digits
    off = tot[:, 0] - 1.0
    is_top = z[rows, y] >= top[:, 0]
    loss = np.where(is_top, np.log1p(np.where(is_top, off, 0.0)),
                    top[:, 0] - z[rows, y] + np.log(tot[:, 0]))
    grad = p
    grad[rows, y] = 0.0
    grad[rows, y] = -grad.sum(axis=1)  # exact: 1 − p_y as the sum of the other probabilities
    return loss, grad


def gd_cross_entropy(x: Any, labels: Any, num_classes: int | None = None, *,
                     steps: int = 100_000, lr_scale: float = 1.0, num_records: int = 120,
                     progress: bool = False) -> GDTrajectory:
    """GD on the mean softmax cross-entropy of logits W x_n (no bias) from W = 0.

    Step η = lr_scale/β with β = λ_max(XᵀX)/(2N) (the softmax Hessian is ≤ ½·I).
    """
    xs = V.as_float64(x, "x", 2)
    y, k = V.as_int_labels(labels, xs.shape[0], num_classes)
    if not 0 < lr_scale < 2:
        raise ValueError(f"lr_scale must be in (0, 2) for gradient descent to be stable, "
                         f"got {lr_scale}")
    n, d = xs.shape
    beta = float(np.linalg.norm(xs, 2) ** 2) / (2.0 * n)
    eta = lr_scale / beta
    record = _record_steps(steps, num_records)
    w = np.zeros((k, d))
    ws, losses = [], []
    j = 0
    scaled = xs * (eta / n)
    it = _progress(steps, progress, "GD cross-entropy")
    rows = np.arange(n)
    for t in range(steps + 1):
        if t == record[j]:
            loss, g = _ce_grad_logits(xs @ w.T, y)
            ws.append(w.copy())
            losses.append(float(loss.mean()))
            j += 1
            if t == steps:
                break
        else:  # the same gradient as _ce_grad_logits, fewer array operations
            g = xs @ w.T
            g -= g.max(axis=1, keepdims=True)
            np.exp(g, out=g)
            g /= g.sum(axis=1, keepdims=True)
            g[rows, y] = 0.0
            g[rows, y] = -g.sum(axis=1)
        w -= g.T @ scaled
        if it is not None and (t + 1) % 1000 == 0:
            it.update(1000)
    if it is not None:
        it.close()
    return GDTrajectory(record, np.array(ws), np.array(losses), eta, beta)


def _progress(steps: int, on: bool, desc: str) -> Any:
    if not on:
        return None
    return tqdm(total=steps, desc=desc, unit="step", unit_scale=True)


# ---------------------------------------------------------------------------- analysis


def direction_gap(weights: np.ndarray, svm_weight: np.ndarray) -> np.ndarray:
    """‖w(t)/‖w(t)‖ − ŵ/‖ŵ‖‖ (Frobenius for matrices) for each recorded w(t); NaN at w = 0."""
    w = np.asarray(weights, dtype=np.float64).reshape(len(weights), -1)
    u = np.asarray(svm_weight, dtype=np.float64).ravel()
    u = u / np.linalg.norm(u)
    norms = np.linalg.norm(w, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.linalg.norm(w / norms[:, None] - u[None, :], axis=1)
    return np.where(norms > 0, gap, np.nan)


def fit_log_slopes(steps: np.ndarray, weights: np.ndarray, svm_weight: np.ndarray, *,
                   tail_decades: float = 2.0) -> dict[str, float]:
    """Least-squares slopes over the last ``tail_decades`` decades of recorded steps t.

    ``norm_slope``: slope of ‖w(t)‖ against ln t (theory: → ‖ŵ‖, reported as
    ``norm_slope_expected``); ``gap_log_slope``: slope of gap·ln t against ln t (theory: → 0,
    gap·ln t bounded); ``gap_log_t_last``: gap·ln t at the last step; ``gap_last``.
    """
    t = np.asarray(steps, dtype=np.float64)
    gap = direction_gap(weights, svm_weight)
    norm = np.linalg.norm(np.asarray(weights).reshape(len(weights), -1), axis=1)
    tail = t >= t[-1] / 10.0**tail_decades
    tail &= t > 1
    lt = np.log(t[tail])
    norm_slope = float(np.polyfit(lt, norm[tail], 1)[0])
    gap_log_slope = float(np.polyfit(lt, gap[tail] * lt, 1)[0])
    return {
        "norm_slope": norm_slope,
        "norm_slope_expected": float(np.linalg.norm(svm_weight)),
        "gap_log_slope": gap_log_slope,
        "gap_log_t_last": float(gap[-1] * np.log(t[-1])),
        "gap_last": float(gap[-1]),
    }


# ---------------------------------------------------------------------------- data


def separable_binary_data(num_samples: int, dim: int, *, separation: float = 3.0,
                          noise: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clouds ±(separation/2)·u + noise·z, resampled until separable through 0.

    Labels in {−1, +1}; half the points in each class.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    y = np.where(np.arange(num_samples) % 2 == 0, 1.0, -1.0)
    for _ in range(1000):
        x = y[:, None] * (0.5 * separation * u)[None, :] + noise * rng.normal(size=(num_samples,
                                                                                     dim))
        if np.all(y * (x @ u) > 0):  # separable by u through the origin
            return x, y
    raise ValueError("could not draw separable data: increase separation or lower noise")


def collapsed_data(num_classes: int, per_class: int, dim: int, *, noise: float = 0.1,
                   scale: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapsed features plus noise: h = μ_y + noise·z with μ a random simplex ETF of norm
    ``scale``. Returns features (N, d), labels (N,), means (K, d)."""
    rng = np.random.default_rng(seed)
    means = simplex_etf(num_classes, dim, scale=scale, seed=rng)
    y = np.repeat(np.arange(num_classes), per_class)
    return means[y] + noise * rng.normal(size=(y.size, dim)), y, means


# ---------------------------------------------------------------------------- regimes


def noise_regimes(num_classes: int, per_class: int, dim: int,
                  noises: list[float] | tuple[float, ...], *, steps: int = 100_000,
                  lr_scale: float = 1.0, num_records: int = 60, seed: int = 0
                  ) -> list[dict[str, Any]]:
    """Self-duality of the GD classifier along t, and of its SVM limit, for each noise σ.

    For each σ: features :func:`collapsed_data` (σ), GD on CE from W = 0
    (:func:`gd_cross_entropy`) and the Crammer–Singer SVM it converges to in direction. Returns
    one dict per σ: ``noise``, ``steps`` (recorded t), ``self_duality`` (NC3 of W(t) against
    the class means, NaN at W = 0), ``svm_self_duality``, ``gap_last`` (direction gap at the
    last t). The first GD step from 0 is exactly along the centred class means (self-duality
    0); the limit is the SVM's, which is O(σ²): self-dual only as σ → 0.
    """
    out = []
    for sigma in noises:
        x, y, _ = collapsed_data(num_classes, per_class, dim, noise=float(sigma), seed=seed)
        svm = crammer_singer_svm(x, y, num_classes)
        traj = gd_cross_entropy(x, y, num_classes, steps=steps, lr_scale=lr_scale,
                                num_records=num_records)
        sd = [measure(x, y, weight=w, num_classes=num_classes).self_duality if np.any(w)
              else float("nan") for w in traj.weights]
        out.append({"noise": float(sigma), "steps": traj.steps, "self_duality": np.array(sd),
                    "svm_self_duality": float(measure(x, y, weight=svm.weight,
                                                      num_classes=num_classes).self_duality),
                    "gap_last": float(direction_gap(traj.weights[-1:], svm.weight)[0])})
    return out

