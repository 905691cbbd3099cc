"""MSE loss decomposition and the central path (Han, Papyan & Donoho, ICLR 2022).

For features h_i (rows of ``features``), labels y_i, classifier W (C, d), bias b (C,) and
ridge λ ≥ 0 the loss is

    L = ½·mean_i ‖W h_i + b − e_{y_i}‖² + λ/2·(‖W‖_F² + ‖b‖²).

With W̃ = [W, b] and x_i = [h_i; 1] it is a ridge regression in W̃, minimised by the
least-squares classifier W̃_LS = [W_LS, b_LS] of ``../shared/nc-math.md``; the exact identity
L = L_NC1 + L_NC2/3 + L_LS⊥ follows (see docs/theory/central-path.md for the derivation).
The *central path* is W = W_LS(H): on it (λ = 0) the loss equals ½·Σ_j 1/(C + ω_j²), where
ω_j are the singular values of the signal-to-noise matrix Σ_W^{-1/2} M̃ (M̃ has the centred
class means as columns), so it is invariant to invertible affine maps of the features.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["mse_decomposition"]

HELP = "MSE loss decomposition (NC1 + NC2/3 + LS-perp) and renormalized flow on the central path"


# ---------------------------------------------------------------------------- input checks


def _as_float64(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` (numpy array, torch tensor on any device, nested list) as finite float64 numpy."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be a numeric array or tensor, got {type(x).__name__}"
        ) from exc
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} NaN/Inf entries")
    return arr


def _as_labels(labels: Any, num_samples: int, num_classes: int | None) -> tuple[np.ndarray, int]:
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != num_samples:
        raise ValueError(
            f"labels must have shape ({num_samples},) to match features, got {y.shape}"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]"
        )
    return y, int(num_classes)


def _balanced_counts(y: np.ndarray, num_classes: int, what: str) -> int:
    counts = np.bincount(y, minlength=num_classes)
    if num_classes < 2:
        raise ValueError(f"{what} needs at least 2 classes, got {num_classes}")
    if counts.min() == 0 or counts.min() != counts.max():
        raise ValueError(
            f"{what} is stated for balanced classes (every class the same number of samples); "
            f"got per-class counts {counts.tolist()}. Subsample to a balanced set first "
            "(e.g. ncollapse.data's balanced subsets)."
        )
    return int(counts[0])


def _class_means(h: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, d) class means; first centred on a close shift so the sums do not lose digits."""
    shift = h.mean(axis=0)
    means = np.zeros((num_classes, h.shape[1]))
    np.add.at(means, y, h - shift)
    means /= np.bincount(y, minlength=num_classes)[:, None]
    return means + shift


# ---------------------------------------------------------------------------- decomposition


def _least_squares(h: np.ndarray, means: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """W_LS, b_LS of nc-math.md for balanced classes (min-norm W_LS when the system is singular).

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
                      lam: float = 0.0) -> dict[str, Any]:
    """The exact split L = L_NC1 + L_NC2/3 + L_LS⊥ of the ridge MSE loss [Han22].

    Args:
        features: (N, d) features h_i (numpy or torch, any device); classes must be balanced.
        labels: (N,) integer labels in [0, C), C = ``weight.shape[0]``.
        weight: (C, d) classifier W.
        bias: (C,) bias b, or None for a bias-free classifier (b = 0, see below).
        lam: ridge λ ≥ 0 on W and b, as in L above.

    Returns:
        ``loss`` (L at the given W, b), ``nc1`` (L_NC1), ``nc2_3`` (L_NC2/3), ``ls_perp``
        (L_LS⊥ ≥ 0; 0 exactly when W̃ = W̃_LS), all floats, with loss = nc1 + nc2_3 + ls_perp
        to rounding, and ``weight_ls`` (C, d), ``bias_ls`` (C,) float64 arrays.

    With ``bias=None`` the loss is that of W̃ = [W, 0] and the decomposition is still exact,
    against the least-squares classifier *with* bias (so L_LS⊥ includes the cost of having no
    bias). With λ = 0 and singular Σ_T the least-squares classifier is not unique; the
    minimum-norm one is used and the identity remains exact (any minimiser satisfies it).
    """
    h = _as_float64(features, "features", 2)
    w = _as_float64(weight, "weight", 2)
    c, d = w.shape
    if h.shape[1] != d:
        raise ValueError(f"features have dim {h.shape[1]} but weight has shape {w.shape}")
    if bias is None:
        b = np.zeros(c)
    else:
        b = _as_float64(bias, "bias", 1)
        if b.shape != (c,):
            raise ValueError(f"bias must have shape ({c},) to match weight, got {b.shape}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    y, c = _as_labels(labels, h.shape[0], c)
    _balanced_counts(y, c, "the MSE decomposition")

    means = _class_means(h, y, c)
    weight_ls, bias_ls = _least_squares(h, means, lam)
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
