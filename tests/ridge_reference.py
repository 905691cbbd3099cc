"""Independent float64 references for the ridge MSE problem (test_decomposition.py and
test_theory_central_path.py): features with balanced classes, the ridge least-squares classifier
by ``numpy.linalg.lstsq`` on the stacked system, and the loss computed directly."""

from __future__ import annotations

import numpy as np


def balanced_features(rng: np.random.Generator, c: int = 4, n: int = 12, d: int = 6,
                      noise: float = 1.0, offset: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples per class around random means (shuffled), with an offset global mean."""
    means = rng.normal(size=(c, d)) * 3.0 + offset * rng.normal(size=d)
    labels = np.repeat(np.arange(c), n)
    rng.shuffle(labels)
    return means[labels] + noise * rng.normal(size=(c * n, d)), labels


def ridge_lstsq(h: np.ndarray, y: np.ndarray, c: int, lam: float,
                scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """min ½ mean‖W̃ x_i − k·e_i‖² + λ/2‖W̃‖² by np.linalg.lstsq on the stacked rows."""
    n, d = h.shape
    x = np.hstack([h, np.ones((n, 1))]) / np.sqrt(n)
    t = scale * np.eye(c)[y] / np.sqrt(n)
    if lam > 0:
        x = np.vstack([x, np.sqrt(lam) * np.eye(d + 1)])
        t = np.vstack([t, np.zeros((d + 1, c))])
    sol = np.linalg.lstsq(x, t, rcond=None)[0].T  # (C, d+1)
    return sol[:, :d], sol[:, d]


def direct_loss(h: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, lam: float,
                scale: float = 1.0) -> float:
    """½ mean‖W h_i + b − k·e_{y_i}‖² + λ/2 (‖W‖² + ‖b‖²), summed directly."""
    c = w.shape[0]
    r = h @ w.T + b - scale * np.eye(c)[y]
    return float(0.5 * np.mean(np.sum(r**2, axis=1)) + 0.5 * lam * (np.sum(w**2) + np.sum(b**2)))
