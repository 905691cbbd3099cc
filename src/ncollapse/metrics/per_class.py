"""Per-class neural-collapse statistics: what each class contributes, for imbalance studies.

For every class c present in the data (C of them, in increasing label order): its sample count
n_c, the norm of its centred mean ‖μ_c − μ_G‖, the norm of its classifier row ‖w_c‖, its
within-class variance Tr(Σ_W,c) = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖², its share of NC1
(1/N) Σ_{i∈c} (h_i − μ_c)ᵀ Σ_B^† (h_i − μ_c) (the shares sum to NC1), and the cosine between
w_c and μ_c − μ_G. The C×C matrices (pairwise cosines of centred means or of classifier rows,
and the pairwise class-distance-normalised variance of Galanti et al.) are computed on request
and refused above ``max_classes`` classes (C² memory), a limit the caller can raise.

:class:`PerClassStats` is attached as ``NCMetrics.per_class`` by ``measure(..., per_class=True)``,
``NCAccumulator(per_class=True)`` and the model functions of :mod:`ncollapse.collect`; its arrays
are float64 / int64 tensors on the CPU (``as_numpy()`` for numpy arrays).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

__all__ = ["DEFAULT_MAX_MATRIX_CLASSES", "PerClassStats", "per_class_stats"]

#: Largest number of classes for which the C×C matrices are built without being asked to.
DEFAULT_MAX_MATRIX_CLASSES = 2048

_F64 = torch.float64


@dataclass(frozen=True)
class PerClassStats:
    """Per-class statistics of one measurement; every array has one entry per present class.

    ``classes`` (C,) the label of each entry; ``counts`` (C,) samples per class;
    ``mean_norms`` (C,) ‖μ_c − μ_G‖; ``weight_norms`` (C,) ‖w_c‖ or None without a classifier;
    ``within_variance`` (C,) Tr(Σ_W,c); ``nc1_contribution`` (C,) each class's share of NC1
    (None when NC1 was not measured, e.g. one pass without full covariance);
    ``weight_mean_cosine`` (C,) cos(w_c, μ_c − μ_G) or None. ``centred_means`` (C, d) and
    ``weights`` (C, d) or None are kept for the matrices.
    """

    classes: torch.Tensor
    counts: torch.Tensor
    mean_norms: torch.Tensor
    weight_norms: torch.Tensor | None
    within_variance: torch.Tensor | None
    nc1_contribution: torch.Tensor | None
    weight_mean_cosine: torch.Tensor | None
    centred_means: torch.Tensor = field(repr=False)
    weights: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return int(self.classes.shape[0])

    def _check_size(self, max_classes: int, what: str) -> None:
        if self.num_classes > max_classes:
            raise ValueError(
                f"the {what} matrix would be {self.num_classes}x{self.num_classes}; refused above "
                f"max_classes={max_classes} classes (memory grows as C^2): pass a larger "
                f"max_classes=... to build it anyway"
            )

    def cosine_matrix(self, of: str = "means", *,
                      max_classes: int = DEFAULT_MAX_MATRIX_CLASSES) -> torch.Tensor:
        """(C, C) cosines between the centred class means (``of="means"``) or the classifier
        rows (``of="weights"``); the diagonal is 1 (NaN for a zero vector)."""
        if of not in ("means", "weights"):
            raise ValueError(f"of must be 'means' or 'weights', got {of!r}")
        vecs = self.centred_means if of == "means" else self.weights
        if vecs is None:
            raise ValueError("no classifier weights were measured; cosine_matrix('weights') "
                             "needs a layer with a classifier")
        self._check_size(max_classes, f"cosine ({of})")
        norms = torch.linalg.vector_norm(vecs, dim=1)
        unit = vecs / norms[:, None]
        return unit @ unit.T

    def cdnv_matrix(self, *, max_classes: int = DEFAULT_MAX_MATRIX_CLASSES) -> torch.Tensor:
        """(C, C) class-distance-normalised variance (σ_c² + σ_c′²) / (2‖μ_c − μ_c′‖²) with
        σ_c² = Tr(Σ_W,c) [Gal22]; the diagonal is NaN. Its mean over c < c′ is
        ``NCMetrics.cdnv``."""
        if self.within_variance is None:
            raise ValueError("within-class variances were not measured, so there is no CDNV")
        self._check_size(max_classes, "CDNV")
        m = self.centred_means
        if self.num_classes ** 2 * m.shape[1] <= 1 << 24:  # exact differences when they fit
            dist2 = ((m[:, None, :] - m[None, :, :]) ** 2).sum(-1)
        else:
            sq = (m * m).sum(1)
            dist2 = (sq[:, None] + sq[None, :] - 2.0 * (m @ m.T)).clamp_min_(0.0)
        var = self.within_variance
        out = (var[:, None] + var[None, :]) / (2.0 * dist2)
        out.fill_diagonal_(float("nan"))
        return out

    def as_numpy(self) -> dict[str, np.ndarray | None]:
        """Every per-class array (not the kept means and rows) as a numpy array, or None."""
        skip = {"centred_means", "weights"}
        return {f.name: None if getattr(self, f.name) is None else getattr(self, f.name).numpy()
                for f in fields(self) if f.name not in skip}


def per_class_stats(*, classes: torch.Tensor, counts: torch.Tensor, means: torch.Tensor,
                    global_mean: torch.Tensor, within_ss: torch.Tensor | None,
                    nc1_terms: torch.Tensor | None, num_samples: int,
                    weight: torch.Tensor | None) -> PerClassStats:
    """Build :class:`PerClassStats` from an accumulator's final state (present classes only).

    ``means`` (C, d) and ``global_mean`` (d,) float64; ``within_ss`` (C,) Σ_{i∈c} ‖h_i − μ_c‖²;
    ``nc1_terms`` (C,) Σ_{i∈c} ‖S⁻¹Vᵀ(h_i − μ_c)‖² with NC1 = nc1_terms.sum() / N;
    ``weight`` (C, d) the classifier rows of these classes.
    """
    cpu = torch.device("cpu")
    mt = (means.to(cpu, _F64) - global_mean.to(cpu, _F64)[None, :])
    n = counts.to(cpu, _F64)
    mean_norms = torch.linalg.vector_norm(mt, dim=1)
    w = None if weight is None else weight.detach().to(cpu, _F64)
    wn = None if w is None else torch.linalg.vector_norm(w, dim=1)
    cos = None if w is None else (w * mt).sum(1) / (wn * mean_norms)
    var = None if within_ss is None else within_ss.to(cpu, _F64) / n
    nc1 = None if nc1_terms is None else nc1_terms.to(cpu, _F64) / float(num_samples)
    return PerClassStats(
        classes=classes.to(cpu, torch.int64), counts=counts.to(cpu, torch.int64),
        mean_norms=mean_norms, weight_norms=wn, within_variance=var, nc1_contribution=nc1,
        weight_mean_cosine=cos, centred_means=mt, weights=w,
    )
