"""Training losses on (logits (B, C), targets (B,) int64), averaged over the batch.

Formulas (z = logits, y = target class, p = softmax(z), e_y = one-hot vector, C classes):

- ``ce``: −log p_y (accurate to the last digit also when p_y → 1, see :class:`CrossEntropy`).
- ``mse``: ½‖z − k·e_y‖², summed over the C classes (not averaged over them as
  ``nn.MSELoss`` does), k = ``mse_scale``. With k = 1 the batch mean is the
  ½·mean_i‖Wh_i + b − e_{y_i}‖² of [Han22] (docs/metrics.md), whose decomposition
  ``ncollapse.metrics.mse_decomposition`` computes.
- ``label-smoothing``: cross-entropy against q = (1 − ε)·e_y + ε/C (ε = ``label_smoothing``,
  the convention of ``torch.nn.functional.cross_entropy``): −Σ_c q_c log p_c.
- ``focal`` (Lin et al., ICCV 2017, without the α weighting): −(1 − p_y)^γ·log p_y,
  γ = ``focal_gamma`` ≥ 0; γ = 0 is cross-entropy.

``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample losses).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LOSSES", "REDUCTIONS", "CrossEntropy", "FocalLoss", "LabelSmoothing", "MSELoss",
           "build_loss"]

LOSSES = ("ce", "mse", "label-smoothing", "focal")
REDUCTIONS = ("mean", "sum", "none")


class _Loss(nn.Module):
    """Shared checks and reduction; each subclass defines ``per_sample(logits, targets)``."""

    def __init__(self, num_classes: int, reduction: str = "mean") -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid choices: "
                             + ", ".join(REDUCTIONS))
        self.num_classes = num_classes
        self.reduction = reduction

    def _check(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (batch, {self.num_classes}), "
                             f"got {tuple(logits.shape)}")
        if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(f"targets must have shape ({logits.shape[0]},), "
                             f"got {tuple(targets.shape)}")
        if targets.dtype != torch.int64:
            raise TypeError(f"targets must be int64 class indices, got {targets.dtype}")

    def _reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(logits, targets)
        return self._reduce(self.per_sample(logits, targets))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, reduction={self.reduction!r}"


def _log_odds_against(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """r = log Σ_{c≠y} exp(z_c − z_y), so that −log p_y = softplus(r) and 1 − p_y = sigmoid(r).

    Unlike log_softmax, which rounds 1 + (1 − p_y) first, both stay accurate to the last
    digit as p_y → 1 (the terminal phase), and so do their gradients.
    """
    z_y = logits.gather(1, targets[:, None])
    others = (logits - z_y).scatter(1, targets[:, None], float("-inf"))
    return torch.logsumexp(others, dim=1)


class CrossEntropy(_Loss):
    """−log softmax(z)_y, computed as softplus(log Σ_{c≠y} exp(z_c − z_y)).

    The value equals ``F.cross_entropy`` up to rounding, but keeps its relative accuracy
    when p_y → 1, where ``F.cross_entropy`` in float32 returns 0 below about 6e−8.
    """

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.softplus(_log_odds_against(logits, targets))


class LabelSmoothing(_Loss):
    """Cross-entropy against (1 − ε)·e_y + ε/C."""

    def __init__(self, num_classes: int, smoothing: float = 0.1, reduction: str = "mean") -> None:
        super().__init__(num_classes, reduction)
        if not (math.isfinite(smoothing) and 0.0 <= smoothing <= 1.0):
            raise ValueError(f"label_smoothing must lie in [0, 1], got {smoothing!r}")
        self.smoothing = float(smoothing)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.smoothing)


class MSELoss(_Loss):
    """½‖z − k·e_y‖² summed over classes (k = ``scale``)."""

    def __init__(self, num_classes: int, scale: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(num_classes, reduction)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"mse_scale must be a positive finite number, got {scale!r}")
        self.scale = float(scale)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(targets, self.num_classes).to(logits.dtype) * self.scale
        return 0.5 * (logits - target).pow(2).sum(dim=1)


class FocalLoss(_Loss):
    """−(1 − p_y)^γ·log p_y (Lin et al. 2017)."""

    def __init__(self, num_classes: int, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__(num_classes, reduction)
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"focal_gamma must be a finite number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        r = _log_odds_against(logits, targets)
        # the clamp keeps the gradient finite where 1 − p_y rounds to 0 and γ < 1
        one_minus = torch.sigmoid(r).clamp_min(torch.finfo(logits.dtype).tiny)
        return one_minus.pow(self.gamma) * F.softplus(r)


def build_loss(name: str, *, num_classes: int, label_smoothing: float = 0.1,
               mse_scale: float = 1.0, focal_gamma: float = 2.0,
               reduction: str = "mean") -> nn.Module:
    """The loss ``name`` (``LOSSES``) as a module called as ``loss(logits, targets)``."""
    if name == "ce":
        return CrossEntropy(num_classes, reduction)
    if name == "mse":
        return MSELoss(num_classes, mse_scale, reduction)
    if name == "label-smoothing":
        return LabelSmoothing(num_classes, label_smoothing, reduction)
    if name == "focal":
        return FocalLoss(num_classes, focal_gamma, reduction)
    raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(LOSSES)}")
