"""Classifier decisions certified without the logits: a radius around each class's anchor.

For a row h of class y and its anchor a_y (the class mean rounded to the compute dtype),

    logit_c(h) - logit_y(h) = (w_c - w_y).(h - a_y) + [logit_c(a_y) - logit_y(a_y)]
                            <= (||w_c|| + ||w_y||) ||h - a_y|| + tau_y,

with tau_y = max_{c != y} logit_c(a_y) - logit_y(a_y), the anchor's own margin. So when
||h - a_y|| < -tau_y / (max_c ||w_c|| + ||w_y||) the classifier's argmax is y, strictly: no
tie, the same decision a float64 computation takes. Near collapse (the terminal phase of
training the library is about) almost every row is that close to its anchor, and the
``N x C`` logits product is skipped for it; the others are scored over class tiles as before.

tau_y needs the logits of the anchors: a ``C x C`` product (``C^2 d``, at most the ``N C d``
of the logits it saves, as every class has a sample). Only an upper bound of tau_y is needed,
so where the hardware multiplies bfloat16 fast (CPUs with AVX512-BF16/AMX, CUDA) the product
is taken in bfloat16 and the bound widened by its rounding: inputs and output rounded to 8
significant bits (relative 2^-8 each) and float32 accumulation, together at most
(2^-6 + 2 (d + 2) 2^-24) (||w_c|| ||a_y|| + |b_c|); elsewhere in the compute dtype with the
decisions' rounding bound. It is computed lazily, for the classes of each chunk, and given
up when the first chunks certify few rows (an uncollapsed model), so that its cost stays a
small fraction of the logits there.
"""

from __future__ import annotations

import math

import torch

from ncollapse.metrics.kernels import class_tile, fast_low_precision, tiled_best
from ncollapse.metrics.tables import Classifier

__all__ = ["Certifier"]

_F64 = torch.float64
_TRIAL_ROWS = 8192  # rows after which a low certification rate turns certification off
_MIN_RATE = 0.25  # certified fraction below which it is not worth the anchors' logits


class Certifier:
    """Per-class certification radii of the classifier decisions (see the module docstring).

    ``radius(y)`` gives, per row label, the radius below which ||h - a_y|| certifies the
    decision y (compute dtype; -inf where nothing is certified), computing the radii of
    classes not seen before.
    """

    def __init__(self, clf: Classifier, anchor: torch.Tensor, present: torch.Tensor,
                 tol: float, tile: int | None) -> None:
        c, d = clf.weight.shape
        ct = anchor.dtype
        self.clf, self.anchor, self.tile = clf, anchor, tile
        self.radii = torch.full((c,), -math.inf, dtype=ct, device=anchor.device)
        self.known = ~present.clone()  # absent classes: never certified, nothing to compute
        eps = torch.finfo(ct).eps
        # rounding of the float scores (tol, the decisions' bound; at least a few float64
        # ulps), and of ||h - a_y|| computed from the rounded difference (relative (d+2) eps)
        self.tol = max(tol, 64.0 * torch.finfo(_F64).eps * math.sqrt(d))
        self.shrink = 1.0 - 2.0 * (d + 2) * eps
        self.low = torch.bfloat16 if fast_low_precision(anchor.device) else None
        st = self.low or ct  # the dtype of the anchors' scores
        if self.low is not None:
            self.tol = 2.0 ** -6 + 2.0 * (d + 2) * 2.0 ** -24
        self.wt = clf.wt if st == ct else clf.weight.to(st).T
        self.bias_st = None if clf.bias is None else clf.bias.to(st)
        self.bmax = 0.0 if clf.bias is None else float(clf.bias.abs().max())
        self.wnorm = torch.linalg.vector_norm(clf.weight, dim=1)
        self.active = c >= 2
        self.checked = self.certified = 0

    def radius(self, y: torch.Tensor) -> torch.Tensor | None:
        """Radii for the labels ``y`` (None once certification is off)."""
        if not self.active:
            return None
        todo = torch.unique(y[~self.known[y]])
        if todo.numel():
            self._compute(todo)
        return torch.index_select(self.radii, 0, y)

    def count(self, rows: int, certified: int) -> None:
        """Record a chunk's outcome; turn certification off when it does not pay."""
        self.checked += rows
        self.certified += certified
        if self.checked >= _TRIAL_ROWS and self.certified < _MIN_RATE * self.checked:
            self.active = False
            self.wt = self.bias_st = None  # the score copies are not needed any more

    def _compute(self, cls: torch.Tensor) -> None:
        clf = self.clf
        a = self.anchor[cls]
        a64 = a.to(_F64)
        a_st = a if self.low is None else a.to(self.low)
        own = torch.linalg.vecdot(clf.weight[cls], a64)
        if clf.bias is not None:
            own += clf.bias[cls]
        num_classes = clf.weight.shape[0]
        rows = max(1, (1 << 23) // max(1, num_classes))
        for r0 in range(0, cls.numel(), rows):
            sl = slice(r0, r0 + rows)
            idx, best, second = tiled_best(a_st[sl], self.wt, self.bias_st, True,
                                           class_tile(a_st[sl].shape[0], num_classes,
                                                      self.tile))
            other = torch.where(idx == cls[sl], second, best).to(_F64)
            scale = clf.wmax * torch.linalg.vector_norm(a64[sl], dim=1) + self.bmax
            tau = other - own[sl] + self.tol * scale  # >= the exact margin
            reach = (self.wnorm[cls[sl]] + clf.wmax) * (1.0 + 1e-12)
            rad = torch.where(tau < 0, -tau / reach * self.shrink,
                              torch.full_like(tau, -math.inf))
            self.radii[cls[sl]] = rad.to(self.radii.dtype)
            # rounding to the compute dtype may round up: step down one ulp where it did
            r_ct = self.radii[cls[sl]]
            up = r_ct.to(_F64) > rad
            if bool(up.any()):
                fixed = torch.nextafter(r_ct[up], torch.full_like(r_ct[up], -math.inf))
                self.radii[cls[sl][up]] = fixed
        self.known[cls] = True

