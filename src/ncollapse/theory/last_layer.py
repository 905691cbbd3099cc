"""The last layer alone on collapsed features (Papyan, Han & Donoho 2020).

Features are fixed at h = μ_y + σz, with μ a randomly rotated simplex ETF of norm α and
z ~ N(0, I_d); only the classifier is trained, with cross-entropy and weight decay

    min_{W,b} (1/N)Σ CE(W h_i + b, y_i) + λ_W/2‖W‖² + λ_b/2‖b‖²     (float64, L-BFGS or GD).

At σ = 0 the minimiser is W = a*·M (rows μ_c), b = 0, with a* the root of a one-dimensional
equation (closed form below), so W is the same ETF as the features (self-duality 0); as σ → 0
the solution approaches it. Decoding: the nearest class mean (NCC) rule on a Gaussian channel
h = μ_y + σz with ETF means has the exact error probability

    P_err = ∫ φ(u)·[1 − Φ(√2·τ − u)^{C−1}] du,   τ = δ/(2σ),  δ = α·sqrt(2C/(C−1)),

(δ is the distance between two ETF vertices), bracketed by Q(τ) ≤ P_err ≤ (C−1)·Q(τ).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

from ncollapse.theory._solve import cross_entropy, minimize_lbfgs

__all__ = [
    "channel_error_exact",
    "channel_error_union",
    "classifier_objective",
    "etf_pairwise_distance",
    "ncc_error_monte_carlo",
    "noiseless_solution",
    "train_classifier",
]

# ---------------------------------------------------------------------------- the objective


def classifier_objective(params: np.ndarray, features: np.ndarray, labels: np.ndarray,
                         num_classes: int, lambda_w: float, lambda_b: float, bias: bool
                         ) -> tuple[float, np.ndarray]:
    """(1/N)Σ CE(W h_i + b, y_i) + λ_W/2‖W‖² + λ_b/2‖b‖² and its gradient, params = [vec W, b]."""
    n, d = features.shape
    c = num_classes
    w = params[: c * d].reshape(c, d)
    b = params[c * d:] if bias else np.zeros(c)
    loss, g = cross_entropy(features @ w.T + b, labels)
    grad_w = g.T @ features + lambda_w * w
    value = loss + 0.5 * lambda_w * float(np.sum(w * w))
    parts = [grad_w.ravel()]
    if bias:
        value += 0.5 * lambda_b * float(b @ b)
        parts.append(g.sum(axis=0) + lambda_b * b)
    return value, np.concatenate(parts)


def _check_lambdas(lambda_w: float, lambda_b: float, bias: bool) -> None:
    if not lambda_w > 0:
        raise ValueError(
            f"lambda_w must be > 0, got {lambda_w}: without weight decay the separable CE "
            "problem has no minimiser (‖W‖ → ∞; see `ncollapse theory implicit-bias`)"
        )
    if bias and lambda_b < 0:
        raise ValueError(f"lambda_b must be >= 0, got {lambda_b}")


def train_classifier(features: Any, labels: Any, num_classes: int, *, lambda_w: float = 5e-3,
                     lambda_b: float = 5e-3, bias: bool = True, method: str = "lbfgs",
                     gtol: float = 1e-10, steps: int = 3000, num_records: int = 40,
                     track: Any = None, init_seed: int | None = None) -> dict[str, Any]:
    """Train only the classifier (W, b) on fixed features.

    Starts from W = 0, b = 0, or with ``init_seed`` from W_ij ~ N(0, 1/d), b = 0 (the
    objective is strongly convex, so the L-BFGS answer does not depend on the start).

    ``method="lbfgs"``: to ‖∇‖ < ``gtol`` (returns ``converged``, ``grad_norm``,
    ``iterations``). ``method="gd"``: ``steps`` of full-batch gradient descent with step
    1/β, β = λ_max(X̃ᵀX̃)/(2N) + λ (X̃ = [H, 1]), recording at log-spaced steps ``record_steps``
    the value of ``track(W, b)`` (if given) in ``tracked``.
    Returns ``weight`` (C, d), ``bias`` (C,) or None, ``objective``.
    """
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if h.ndim != 2 or y.shape != (h.shape[0],):
        raise ValueError(f"features must be (N, d) and labels (N,), got {h.shape}, {y.shape}")
    _check_lambdas(lambda_w, lambda_b, bias)
    c, d = num_classes, h.shape[1]
    size = c * d + (c if bias else 0)
    p0 = np.zeros(size)
    if init_seed is not None:
        p0[: c * d] = np.random.default_rng(init_seed).normal(size=c * d) / math.sqrt(d)

    def fun(p: np.ndarray) -> tuple[float, np.ndarray]:
        return classifier_objective(p, h, y, c, lambda_w, lambda_b, bias)

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return p[: c * d].reshape(c, d).copy(), (p[c * d:].copy() if bias else None)

    if method == "lbfgs":
        res = minimize_lbfgs(fun, p0, gtol=gtol)
        w, b = unpack(res.x)
        return {"weight": w, "bias": b, "objective": res.fun, "grad_norm": res.grad_norm,
                "converged": res.converged, "iterations": res.iterations}
    if method != "gd":
        raise ValueError(f"method must be 'lbfgs' or 'gd', got {method!r}")
    xt = np.hstack([h, np.ones((h.shape[0], 1))]) if bias else h
    beta = float(np.linalg.norm(xt, 2) ** 2) / (2.0 * h.shape[0]) + max(lambda_w, lambda_b)
    eta = 1.0 / beta
    record = np.unique(np.concatenate([[0], np.geomspace(1, steps, num_records).astype(int)]))
    p = p0
    tracked = []
    j = 0
    for t in range(steps + 1):
        value, grad = fun(p)
        if t == record[j]:
            if track is not None:
                tracked.append(track(*unpack(p)))
            j += 1
        if t == steps:
            break
        p -= eta * grad
    w, b = unpack(p)
    return {"weight": w, "bias": b, "objective": value, "grad_norm": float(np.linalg.norm(grad)),
            "record_steps": record, "tracked": tracked, "lr": eta}


def noiseless_solution(num_classes: int, scale: float, lambda_w: float) -> dict[str, float]:
    """Closed form at σ = 0: W = a*·M, b = 0, with a* minimising
    f(a) = log(1 + (C−1)·exp(−κa)) + λ_W/2·C·α²·a²,  κ = α²·C/(C−1).

    a* is the root of f'(a) = −(C−1)κ/(exp(κa) + C−1) + λ_W·C·α²·a (found to machine
    precision by bracketing); returns ``a``, ``objective`` = f(a*), ``weight_norm`` = a*·α.
    """
    c, alpha = int(num_classes), float(scale)
    if not lambda_w > 0:
        raise ValueError(f"lambda_w must be > 0 for a minimiser to exist, got {lambda_w}")
    kappa = alpha**2 * c / (c - 1.0)

    def deriv(a: float) -> float:
        return -(c - 1.0) * kappa / (math.exp(min(kappa * a, 700.0)) + c - 1.0) \
            + lambda_w * c * alpha**2 * a

    hi = 1.0
    while deriv(hi) < 0:
        hi *= 2.0
    a = brentq(deriv, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    obj = math.log1p((c - 1.0) * math.exp(-kappa * a)) + 0.5 * lambda_w * c * alpha**2 * a**2
    return {"a": a, "objective": obj, "weight_norm": a * alpha}


# ---------------------------------------------------------------------------- Gaussian channel


def etf_pairwise_distance(num_classes: int, scale: float = 1.0) -> float:
    """Distance between two vertices of a simplex ETF of norm α: α·sqrt(2C/(C−1))."""
    return float(scale) * math.sqrt(2.0 * num_classes / (num_classes - 1.0))


def channel_error_exact(num_classes: int, sigma: float | np.ndarray, *, scale: float = 1.0,
                        distance: float | None = None) -> np.ndarray:
    """Exact NCC error probability on h = μ_y + σz for equal-norm means whose pairwise
    differences have equal length δ and correlation ½ (the simplex ETF; also the orthogonal
    frame, with δ = α√2): P = ∫ φ(u)[1 − Φ(√2τ − u)^{C−1}] du, τ = δ/(2σ).

    ``distance`` defaults to :func:`etf_pairwise_distance` (C, ``scale``).
    """
    c = int(num_classes)
    delta = etf_pairwise_distance(c, scale) if distance is None else float(distance)
    sig = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    out = np.empty_like(sig)
    for i, s in enumerate(sig):
        tau = delta / (2.0 * s)

        def integrand(u: float, tau: float = tau) -> float:
            return math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi) * \
                -math.expm1((c - 1) * float(log_ndtr(math.sqrt(2.0) * tau - u)))

        centre = math.sqrt(2.0) * tau
        val = 0.0
        for lo, hi in ((-np.inf, centre - 8), (centre - 8, centre + 8), (centre + 8, np.inf)):
            val += quad(integrand, lo, hi, epsabs=0.0, epsrel=1e-12, limit=200)[0]
        out[i] = val
    return out


def channel_error_union(num_classes: int, sigma: float | np.ndarray, *, scale: float = 1.0
                        ) -> np.ndarray:
    """Union bound (C−1)·Q(δ/(2σ)) for the ETF (δ: :func:`etf_pairwise_distance`)."""
    delta = etf_pairwise_distance(num_classes, scale)
    return (num_classes - 1) * ndtr(-delta / (2.0 * np.atleast_1d(np.asarray(sigma,
                                                                        dtype=np.float64))))


def ncc_error_monte_carlo(means: np.ndarray, sigma: float, samples_per_class: int,
                          rng: np.random.Generator, weight: np.ndarray | None = None,
                          bias: np.ndarray | None = None, chunk: int = 20000
                          ) -> dict[str, float]:
    """Monte-Carlo error of NCC decoding (argmin_c ‖h − μ_c‖) on h = μ_y + σz; with
    ``weight`` also the error of argmax(W h + b) and the fraction where the two disagree."""
    c, d = means.shape
    sq = np.sum(means * means, axis=1)
    errs = mism = cls_errs = 0
    total = 0
    for start in range(0, samples_per_class * c, chunk):
        m = min(chunk, samples_per_class * c - start)
        y = (np.arange(start, start + m) % c)
        h = means[y] + sigma * rng.normal(size=(m, d))
        ncc = np.argmin(sq[None, :] - 2.0 * h @ means.T, axis=1)
        errs += int(np.sum(ncc != y))
        if weight is not None:
            pred = np.argmax(h @ weight.T + (0.0 if bias is None else bias), axis=1)
            cls_errs += int(np.sum(pred != y))
            mism += int(np.sum(pred != ncc))
        total += m
    out = {"ncc_error": errs / total, "samples": float(total)}
    if weight is not None:
        out["classifier_error"] = cls_errs / total
        out["mismatch"] = mism / total
    return out
