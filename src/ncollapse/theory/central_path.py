"""MSE loss decomposition and the central path (Han, Papyan & Donoho, ICLR 2022).

For features h_i (rows of ``features``), labels y_i, classifier W (C, d), bias b (C,) and
ridge λ ≥ 0 the loss is

    L = ½·mean_i ‖W h_i + b − e_{y_i}‖² + λ/2·(‖W‖_F² + ‖b‖²).

With W̃ = [W, b] and x_i = [h_i; 1] it is a ridge regression in W̃, minimised by the
least-squares classifier W̃_LS = [W_LS, b_LS] (:func:`ncollapse.metrics.least_squares_classifier`);
the exact identity L = L_NC1 + L_NC2/3 + L_LS⊥ follows (derivation:
docs/theory/central-path.md).
The *central path* is W = W_LS(H): on it (λ = 0) the loss equals ½·Σ_j 1/(C + ω_j²), where
ω_j are the singular values of the signal-to-noise matrix Σ_W^{-1/2} M̃ (M̃ has the centred
class means as columns), so it is invariant to invertible affine maps of the features.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from tqdm import tqdm

from ncollapse import validation as V
from ncollapse.geometry import etf_distance, helmert_basis, random_orthonormal
from ncollapse.metrics import class_means, least_squares_classifier, mse_decomposition

__all__ = [
    "central_path_gradient",
    "central_path_loss",
    "mse_decomposition",
    "initial_features",
    "ode_snr_trajectory",
    "renormalize",
    "renormalized_flow",
    "snr_recurrence",
    "snr_singular_values",
]

# ---------------------------------------------------------------------------- central path


def _prepare(features: Any, labels: Any, num_classes: int | None, what: str
             ) -> tuple[np.ndarray, np.ndarray, int]:
    h = V.as_float64(features, "features", 2)
    y, c = V.as_int_labels(labels, h.shape[0], num_classes)
    V.require_balanced(np.bincount(y, minlength=c), what)
    return h, y, c


def _class_means(h: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    return class_means(h, y, num_classes)[0]


def central_path_loss(features: Any, labels: Any, num_classes: int | None = None) -> float:
    """The MSE loss (λ = 0) at the least-squares classifier of the features: L(W_LS(H), b_LS(H))."""
    h, y, c = _prepare(features, labels, num_classes, "the central-path loss")
    w, b = least_squares_classifier(h, _class_means(h, y, c), 0.0)
    r = h @ w.T + b - np.eye(c)[y]
    return 0.5 * float(np.mean(np.sum(r * r, axis=1)))


def central_path_gradient(features: Any, labels: Any, num_classes: int | None = None
                          ) -> np.ndarray:
    """∇_H of the central-path loss, (N, d): row i is (1/N)·W_LSᵀ(W_LS h_i + b_LS − e_{y_i}).

    W_LS, b_LS minimise the loss for the current features, so their own dependence on H
    contributes nothing (envelope theorem).
    """
    h, y, c = _prepare(features, labels, num_classes, "the central-path gradient")
    w, b = least_squares_classifier(h, _class_means(h, y, c), 0.0)
    r = h @ w.T + b - np.eye(c)[y]
    return (r @ w) / h.shape[0]


def _whitener(h: np.ndarray, y: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Σ_W^{-1/2} (symmetric), from the SVD of the class-centred features."""
    n, d = h.shape
    _, s, vt = np.linalg.svd((h - means[y]) / math.sqrt(n), full_matrices=False)
    if s.size < d or s.min() <= s.max() * d * np.finfo(np.float64).eps * 10:
        raise ValueError(
            f"the within-class covariance is singular (rank < d = {d}); the SNR matrix "
            "Σ_W^{-1/2} M̃ needs N − C ≥ d samples in general position"
        )
    return (vt.T / s) @ vt


def snr_singular_values(features: Any, labels: Any, num_classes: int | None = None
                        ) -> np.ndarray:
    """The C−1 largest singular values ω_j of the SNR matrix Σ_W^{-1/2} M̃, descending.

    M̃ (d × C) has the centred class means μ_c − μ_G as columns; Σ_W is the within-class
    covariance (1/N normalisation). Balanced classes; Σ_W must be invertible.
    """
    h, y, c = _prepare(features, labels, num_classes, "the SNR matrix")
    means = _class_means(h, y, c)
    centred = means - means.mean(axis=0)
    omega = np.linalg.svd(centred @ _whitener(h, y, means), compute_uv=False)
    out = np.zeros(c - 1)
    k = min(c - 1, omega.size)
    out[:k] = omega[:k]
    return out


def renormalize(features: Any, labels: Any, num_classes: int | None = None) -> np.ndarray:
    """The affinely renormalised features Σ_W^{-1/2}(h − μ_G): global mean 0, Σ_W = I."""
    h, y, c = _prepare(features, labels, num_classes, "renormalisation")
    means = _class_means(h, y, c)
    return (h - means.mean(axis=0)) @ _whitener(h, y, means)


def snr_recurrence(omega: np.ndarray, step: float, num_classes: int, num_samples: int
                   ) -> np.ndarray:
    """One step of the exact discrete dynamics of the ω_j under :func:`renormalized_flow`.

    ω ← ω·(1 + ηC/(N(C+ω²)²)) / (1 − ηω²/(N(C+ω²)²)) (derivation in docs/theory/central-path.md).
    """
    q = num_samples * (num_classes + omega**2) ** 2
    return omega * (1.0 + step * num_classes / q) / (1.0 - step * omega**2 / q)


def _ode_invariant(omega: np.ndarray, c: int, n: int) -> np.ndarray:
    """F(ω) = N·(C log ω + ω²/2); dF/dt = 1 along the flow dω/dt = ω/(N(C + ω²))."""
    return n * (c * np.log(omega) + 0.5 * omega**2)


def ode_snr_trajectory(omega0: np.ndarray, times: np.ndarray, num_classes: int,
                       num_samples: int) -> np.ndarray:
    """ω_j(t) of the renormalized gradient flow dω/dt = ω/(N(C + ω²)).

    Solves F(ω_j(t)) = F(ω_j(0)) + t (F increasing) by bisection in log ω, to machine
    precision. Returns an array of shape (len(times), len(omega0)).
    """
    omega0 = np.asarray(omega0, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if np.any(omega0 <= 0):
        raise ValueError("the ODE needs positive initial singular values ω_j(0)")
    target = _ode_invariant(omega0, num_classes, num_samples)[None, :] + times[:, None]
    lo = np.broadcast_to(np.log(omega0), target.shape).copy()
    # grow the upper end of the bracket until F(ω) passes the target
    hi = lo + 1.0
    for _ in range(200):
        short = _ode_invariant(np.exp(hi), num_classes, num_samples) < target
        if not short.any():
            break
        hi = np.where(short, hi + 1.0, hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = _ode_invariant(np.exp(mid), num_classes, num_samples) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.exp(0.5 * (lo + hi))


def initial_features(num_classes: int, per_class: int, dim: int, omega0: np.ndarray,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced features with Σ_W = I, μ_G = 0 and SNR singular values exactly ``omega0``."""
    c, n, d = num_classes, per_class, dim
    omega0 = np.asarray(omega0, dtype=np.float64)
    if omega0.shape != (c - 1,):
        raise ValueError(f"omega0 must have C − 1 = {c - 1} entries, got shape {omega0.shape}")
    if d < c - 1 or c * n - c < d:
        raise ValueError(
            f"need C − 1 ≤ d ≤ N − C (so Σ_W is invertible), got C={c}, d={d}, N={c * n}"
        )
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), n)
    z = rng.normal(size=(c * n, d))
    z -= _class_means(z, y, c)[y]
    z = z @ _whitener(z, y, np.zeros((c, d)))  # exactly Σ_W = I, class means 0
    u = random_orthonormal(d, c - 1, rng)  # feature directions
    v = helmert_basis(c) @ random_orthonormal(c - 1, c - 1, rng)  # ⟂ 1 in class space
    centred_means = (u * omega0) @ v.T  # d × C, columns μ_c, singular values omega0
    return z + centred_means.T[y], y


def renormalized_flow(features: Any, labels: Any, *, steps: int = 4000, rel_step: float = 2e-3,
                      num_records: int = 60, progress: bool = False) -> dict[str, Any]:
    """Gradient descent on the central-path loss with continual affine renormalisation.

    Each step: (1) renormalise H ← Σ_W^{-1/2}(H − μ_G); (2) take a gradient step
    H ← H − η·∇_H L_cp(H) with W = W_LS(H) (λ = 0); the loss is invariant to (1), so (1) only
    removes the scale the loss cannot see. η is chosen per step so that no ω_j moves by more
    than ``rel_step`` relatively (η = rel_step·N·(C + min_j ω_j²)); the time t = Σ η is the
    time of the continuous flow dω/dt = ω/(N(C + ω²)).

    Returns ``time``, ``omega`` (records × (C−1)), ``loss``, ``recurrence_omega`` (the exact
    discrete recurrence :func:`snr_recurrence` run from the same start with the same η),
    ``ode_omega`` (:func:`ode_snr_trajectory`), ``etf_distance`` (relative distance of the
    whitened class means to the nearest simplex ETF), ``features`` (the final, renormalised),
    ``labels`` and ``steps_taken``.
    """
    h, y, c = _prepare(features, labels, None, "the central-path flow")
    n = h.shape[0]
    if steps < 1 or not (0 < rel_step < 0.5):
        raise ValueError(f"need steps >= 1 and 0 < rel_step < 0.5, got {steps}, {rel_step}")
    record_at = set(np.unique(np.geomspace(1, steps, num_records).astype(int)).tolist())
    record_at.add(0)
    h = renormalize(h, y, c)
    omega_rec = snr_singular_values(h, y, c)
    times, omegas, losses, rec, etf = [], [], [], [], []
    t = 0.0
    iterator = range(steps + 1)
    if progress:
        iterator = tqdm(iterator, desc="central path", unit="step")
    for k in iterator:
        h = renormalize(h, y, c)
        if k in record_at:
            times.append(t)
            omegas.append(snr_singular_values(h, y, c))
            losses.append(central_path_loss(h, y, c))
            rec.append(omega_rec.copy())
            etf.append(etf_distance(_class_means(h, y, c)))
        if k == steps:
            break
        omega = np.sort(omega_rec)[::-1]
        eta = rel_step * n * (c + float(omega.min()) ** 2)
        h = h - eta * central_path_gradient(h, y, c)
        omega_rec = snr_recurrence(omega_rec, eta, c, n)
        t += eta
    times_a = np.array(times)
    omegas_a = np.array(omegas)
    return {
        "time": times_a,
        "omega": omegas_a,
        "loss": np.array(losses),
        "recurrence_omega": np.array(rec),
        "etf_distance": np.array(etf),
        "ode_omega": ode_snr_trajectory(omegas_a[0], times_a, c, n),
        "features": h,
        "labels": y,
        "steps_taken": steps,
    }
