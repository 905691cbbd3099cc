"""The UFM instance and its objective: sizes, loss, bias switch, weight decay; f and ∇f in float64.

Objectives (N = C·n samples, n per class, features H as the (N, d) rows h_i, classifier W (C, d),
bias b (C,), one-hot targets Y (N, C)); see ``docs/theory/ufm.md``:

- ``loss="ce"`` [Zhu21]: (1/N)·Σ_i CE(W h_i + b, y_i) + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖².
- ``loss="mse"`` [Tir22, Mix20]: (1/2N)‖H Wᵀ + 1bᵀ − Y‖² + λ_W/(2C)‖W‖² + λ_H/(2N)‖H‖²
  + λ_b/(2C)‖b‖².

The bias terms are present only when ``bias=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ncollapse.theory._solve import cross_entropy

__all__ = ["LOSSES", "UFMProblem", "objective", "objective_and_gradient"]

LOSSES = ("ce", "mse")


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
        """N = C·n."""
        return self.classes * self.per_class

    @property
    def labels(self) -> np.ndarray:
        """Class-major labels: sample i belongs to class i // per_class."""
        return np.repeat(np.arange(self.classes), self.per_class)

    @property
    def num_parameters(self) -> int:
        """Length of the flat parameter vector (W, H, b)."""
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
        """(W, H, b) -> the flat float64 parameter vector (b = 0 when None and a bias is learnt)."""
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


def _fun_grad(problem: UFMProblem, feature_scale: float = 1.0
              ) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """f and ∇f on the flat vector (W, H/feature_scale, b): a diagonal preconditioner."""
    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        w, h, b = problem.split(x)
        f, gw, gh, gb = objective_and_gradient(problem, w, feature_scale * h, b)
        return f, problem.join(gw, feature_scale * gh, gb)
    return fg
