"""MSE loss decomposition L = L_NC1 + L_NC2/3 + L_LS⊥ (Han, Papyan & Donoho, ICLR 2022).

For features h_i, labels y_i, classifier W (C, d), bias b (C,) and ridge λ ≥ 0 the loss
L = ½·mean_i ‖W h_i + b − e_{y_i}‖² + λ/2·(‖W‖_F² + ‖b‖²) is a ridge regression in [W, b],
minimised by the least-squares classifier [W_LS, b_LS] (docs/theory/central-path.md); the exact
identity splits L into within-class variability, the gap of the least-squares classifier on the
class means, and the distance to the central path. Derivation: docs/theory/central-path.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ncollapse import validation as V
from ncollapse.metrics.kernels import class_means

__all__ = ["least_squares_classifier", "mse_decomposition"]


def least_squares_classifier(h: np.ndarray, means: np.ndarray, lam: float
                             ) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares classifier W_LS (C, d), b_LS (C,) of features ``h`` (N, d) with class
    means ``means`` (C, d), balanced classes, ridge ``lam`` (W_LS = (1/C)(Mᵀ − 1μ_Gᵀ/(1+λ))
    (Σ_T + λ/(1+λ)·μ_Gμ_Gᵀ + λI)⁻¹, b_LS = (1/C·1 − W_LS μ_G)/(1+λ); the minimum-norm W_LS
    when the system is singular). Float64 numpy arrays in and out.

    K = Σ_T + λ/(1+λ)·μ_Gμ_Gᵀ + λI is formed as ZᵀZ and inverted through the SVD of Z, so the
    condition number that matters is that of Z (the square root of K's).
    """
    n, d = h.shape
    c = means.shape[0]
    mu_g = means.mean(axis=0)
    blocks = [(h - mu_g) / math.sqrt(n)]
    if lam > 0:
        blocks.append(math.sqrt(lam / (1.0 + lam)) * mu_g[None, :])
        blocks.append(math.sqrt(lam) * np.eye(d))
    z = np.vstack(blocks)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(z.shape) * np.finfo(np.float64).eps
    rhs = (means - mu_g[None, :] / (1.0 + lam)) / c  # (C, d) = (1/C)(Mᵀ − 1μ_Gᵀ/(1+λ))
    proj = rhs @ vt[keep].T  # (C, r)
    weight_ls = (proj / s[keep] ** 2) @ vt[keep]
    bias_ls = (np.full(c, 1.0 / c) - weight_ls @ mu_g) / (1.0 + lam)
    return weight_ls, bias_ls


def mse_decomposition(features: Any, labels: Any, weight: Any, bias: Any = None,
                      lam: float = 0.0, *, target_scale: float = 1.0) -> dict[str, Any]:
    """The exact split L = L_NC1 + L_NC2/3 + L_LS⊥ of the ridge MSE loss [Han22].

    Args:
        features: (N, d) features h_i (numpy or torch, any device); classes must be balanced.
        labels: (N,) integer labels in [0, C), C = ``weight.shape[0]``.
        weight: (C, d) classifier W.
        bias: (C,) bias b, or None for a bias-free classifier (b = 0, see below).
        lam: ridge λ ≥ 0 on W and b, as in L above.
        target_scale: k > 0 for targets k·e_y (the ``mse_scale`` of ``ncollapse.losses``):
            L_k(W, b) = k²·L(W/k, b/k), so every term is k² times that of (W/k, b/k) and
            W_LS, b_LS are k times those for k = 1.

    Returns:
        ``loss`` (L at the given W, b), ``nc1`` (L_NC1), ``nc2_3`` (L_NC2/3), ``ls_perp``
        (L_LS⊥ ≥ 0; 0 exactly when W̃ = W̃_LS), all floats, with loss = nc1 + nc2_3 + ls_perp
        to rounding, and ``weight_ls`` (C, d), ``bias_ls`` (C,) float64 arrays.

    With ``bias=None`` the loss is that of W̃ = [W, 0] and the decomposition is still exact,
    against the least-squares classifier *with* bias (so L_LS⊥ includes the cost of having no
    bias). With λ = 0 and singular Σ_T the least-squares classifier is not unique; the
    minimum-norm one is used and the identity remains exact (any minimiser satisfies it).
    """
    h = V.as_float64(features, "features", 2)
    w = V.as_float64(weight, "weight", 2)
    c, d = w.shape
    if h.shape[1] != d:
        raise ValueError(f"features have dim {h.shape[1]} but weight has shape {w.shape}")
    if bias is None:
        b = np.zeros(c)
    else:
        b = V.as_float64(bias, "bias", 1)
        if b.shape != (c,):
            raise ValueError(f"bias must have shape ({c},) to match weight, got {b.shape}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if isinstance(target_scale, bool) or not isinstance(target_scale, (int, float, np.floating,
                                                                         np.integer)):
        raise TypeError(f"target_scale must be a real number, got {type(target_scale).__name__}")
    k = float(target_scale)
    if not math.isfinite(k) or k <= 0:
        raise ValueError(f"target_scale must be finite and > 0, got {target_scale}")
    y, c = V.as_int_labels(labels, h.shape[0], c)
    V.require_balanced(np.bincount(y, minlength=c), "the MSE decomposition")
    if k != 1.0:
        out = mse_decomposition(h, y, w / k, b / k, lam)
        return {"loss": k * k * out["loss"], "nc1": k * k * out["nc1"],
                "nc2_3": k * k * out["nc2_3"], "ls_perp": k * k * out["ls_perp"],
                "weight_ls": k * out["weight_ls"], "bias_ls": k * out["bias_ls"]}

    means, _ = class_means(h, y, c)
    weight_ls, bias_ls = least_squares_classifier(h, means, lam)
    targets = np.eye(c)[y]

    def half_ridge(wm: np.ndarray, bv: np.ndarray) -> float:
        return 0.5 * lam * (float(np.sum(wm * wm)) + float(bv @ bv))

    resid = h @ w.T + b - targets
    loss = 0.5 * float(np.mean(np.sum(resid * resid, axis=1))) + half_ridge(w, b)

    within = (h - means[y]) @ weight_ls.T
    nc1 = 0.5 * float(np.mean(np.sum(within * within, axis=1))) + half_ridge(weight_ls, bias_ls)

    gap = means @ weight_ls.T + bias_ls[None, :] - np.eye(c)  # (W_LS M + b_LS 1ᵀ − I)ᵀ
    nc2_3 = float(np.sum(gap * gap)) / (2.0 * c)

    dw, db = w - weight_ls, b - bias_ls
    dev = h @ dw.T + db
    ls_perp = 0.5 * float(np.mean(np.sum(dev * dev, axis=1))) + half_ridge(dw, db)
    return {"loss": loss, "nc1": nc1, "nc2_3": nc2_3, "ls_perp": ls_perp,
            "weight_ls": weight_ls, "bias_ls": bias_ls}
