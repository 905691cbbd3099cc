"""Independent float64 numpy reference for the NC metrics, straight from the definitions in
docs/metrics.md.

Deliberately plain and slow: d x d Sigma_W and Sigma_B, eigendecomposition of Sigma_B for its
pseudo-inverse over the top min(C - 1, rank) eigenpairs, explicit distance matrices for the
nearest class centre. Used only by the tests.
"""

from __future__ import annotations

import numpy as np


def _np(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _pairs(c: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(c, 1)


def _nc2(x: np.ndarray) -> tuple[float, float | None, float, float, float, float]:
    """Equinorm, equiangularity, max-angle, ETF error, log-energy mean and variance."""
    c = x.shape[0]
    norms = np.sqrt((x * x).sum(1))
    equinorm = norms.std(ddof=1) / norms.mean()
    u = x / norms[:, None]
    cos = u @ u.T
    i, j = _pairs(c)
    pairs = cos[i, j]
    equiang = pairs.std(ddof=1) if pairs.size > 1 else None
    maxangle = np.abs(pairs + 1.0 / (c - 1)).mean()
    dist = np.sqrt(np.maximum(((u * u).sum(1)[i] + (u * u).sum(1)[j] - 2.0 * pairs), 0.0))
    with np.errstate(divide="ignore"):
        energy = np.log(1.0 / dist)
    return float(equinorm), None if equiang is None else float(equiang), float(maxangle), \
        etf_gram_error(x @ x.T), float(energy.mean()), float(energy.var())


def etf_gram_error(g: np.ndarray) -> float:
    c = g.shape[0]
    target = (np.eye(c) - np.ones((c, c)) / c) / np.sqrt(c - 1)
    return float(np.linalg.norm(g / np.linalg.norm(g) - target))


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances between the rows of a and b; explicit differences when small."""
    if a.shape[0] * b.shape[0] * a.shape[1] <= 1 << 22:
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def reference_metrics(features, labels, weight=None, bias=None, logits=None, ncc_means=None,
                      num_classes=None, ood_features=None) -> dict:
    """All metrics as a dict, computed in float64 on the upcast inputs."""
    h = _np(features).astype(np.float64)
    y = _np(labels).astype(np.int64)
    w = None if weight is None else _np(weight).astype(np.float64)
    b = None if bias is None else _np(bias).astype(np.float64)
    lg = None if logits is None else _np(logits).astype(np.float64)
    nu = None if ncc_means is None else _np(ncc_means).astype(np.float64)
    n, d = h.shape
    present = np.unique(y)
    cp = present.size
    idx = np.full(present.max() + 1, -1)
    idx[present] = np.arange(cp)
    yi = idx[y]
    counts = np.bincount(yi, minlength=cp)
    means = np.zeros((cp, d))
    np.add.at(means, yi, h)
    means /= counts[:, None]
    mu_g = h.mean(0)
    mt = means - mu_g
    r = h - means[yi]
    sigma_w = r.T @ r / n
    sigma_b = mt.T @ mt / cp
    lam, vec = np.linalg.eigh(sigma_b)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    tol = lam[0] * max(cp, d) * 1e-13
    k = min(cp - 1, int((lam > tol).sum()))
    pinv = (vec[:, :k] / lam[:k]) @ vec[:, :k].T
    out: dict = {"num_classes": cp, "num_samples": n, "dim": d}
    out["nc1"] = float(np.trace(sigma_w @ pinv) / cp)
    out["nc1_trace_ratio"] = float(np.trace(sigma_w) / np.trace(sigma_b))
    var = np.bincount(yi, weights=(r * r).sum(1), minlength=cp) / counts
    i, j = _pairs(cp)
    dm = _sqdist(means, means)
    out["cdnv"] = float(np.mean((var[i] + var[j]) / (2 * dm[i, j])))
    (out["equinorm_means"], out["equiangular_means"], out["maxangle_means"],
     out["etf_error_means"], out["hyperspherical_energy_means"],
     out["hyperspherical_energy_var_means"]) = _nc2(mt)
    keys_w = ["equinorm_weights", "equiangular_weights", "maxangle_weights",
              "etf_error_weights", "self_duality", "self_duality_etf_error", "bias_collapse",
              "hyperspherical_energy_weights", "hyperspherical_energy_var_weights",
              "uniform_duality"]
    for key in keys_w:
        out[key] = None
    if w is not None:
        wp = w[present]
        (out["equinorm_weights"], out["equiangular_weights"], out["maxangle_weights"],
         out["etf_error_weights"], out["hyperspherical_energy_weights"],
         out["hyperspherical_energy_var_weights"]) = _nc2(wp)
        out["self_duality"] = float(
            (np.linalg.norm(wp / np.linalg.norm(wp) - mt / np.linalg.norm(mt))) ** 2)
        out["self_duality_etf_error"] = etf_gram_error(wp @ mt.T)
        out["bias_collapse"] = float(np.linalg.norm(w @ mu_g + (0 if b is None else b)))
        cos = (wp * mt).sum(1) / (np.linalg.norm(wp, axis=1) * np.linalg.norm(mt, axis=1))
        out["uniform_duality"] = float(cos.std(ddof=1) / cos.mean())
    out["ood_orthogonality"] = None
    if ood_features is not None:
        dv = _np(ood_features).astype(np.float64).mean(0) - mu_g
        cos = mt @ dv / (np.linalg.norm(mt, axis=1) * np.linalg.norm(dv))
        out["ood_orthogonality"] = float(np.abs(cos).mean())
    # classifier decisions
    pred = None
    if lg is not None:
        pred = lg.argmax(1)
    elif w is not None:
        pred = (h @ w.T + (0 if b is None else b)).argmax(1)
    out["accuracy"] = None if pred is None else float((pred == y).mean())
    # nearest class centre by explicit distances (in chunks of samples)
    centres = means if nu is None else nu
    ncc = np.concatenate([_sqdist(h[s:s + 512], centres).argmin(1)
                          for s in range(0, n, 512)])
    ncc = present[ncc] if nu is None else ncc
    out["ncc_mismatch"] = None if pred is None else float((pred != ncc).mean())
    out["ncc_error"] = float((ncc != y).mean())
    return out


def synthetic(n: int, d: int, c: int, sigma: float, *, imbalanced: bool = False,
              offset: float = 0.0, seed: int = 0, dtype=np.float64):
    """Gaussian classes around random means: features (n, d), labels, weight (c, d), bias (c,).

    ``imbalanced`` draws class sizes in proportion 1..5; ``offset`` is added to every feature
    coordinate (a large common mean); the classifier is the means plus noise.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((c, d))
    p = np.linspace(1.0, 5.0, c) if imbalanced else np.ones(c)
    labels = rng.choice(c, size=n, p=p / p.sum())
    labels[:c] = np.arange(c)  # every class present
    feats = offset + means[labels] + sigma * rng.standard_normal((n, d))
    weight = means + 0.3 * rng.standard_normal((c, d))
    bias = 0.1 * rng.standard_normal(c)
    return feats.astype(dtype), labels, weight, bias


def simplex_etf(c: int, d: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Rows of a simplex ETF (c, d), d >= c - 1: equal norms ``scale``, cosines -1/(c-1)."""
    rng = np.random.default_rng(seed)
    lam, vec = np.linalg.eigh(np.eye(c) - np.ones((c, c)) / c)
    e = vec[:, lam > 0.5]  # orthonormal basis of the complement of the ones vector, (c, c-1)
    q, _ = np.linalg.qr(rng.standard_normal((d, c - 1)))  # random isometry R^(c-1) -> R^d
    return scale * np.sqrt(c / (c - 1)) * e @ q.T
