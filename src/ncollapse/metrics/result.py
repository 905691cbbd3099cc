"""The result type of a neural-collapse measurement and its alternative conventions."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ncollapse.metrics.per_class import PerClassStats

__all__ = ["NCMetrics", "nc1_unnormalized", "self_duality_unsquared", "equiangular_ordered_pairs"]


@dataclass
class NCMetrics:
    """Neural-collapse measurements (see docs/metrics.md). None: not measurable from the inputs.

    num_classes is the number of classes present in the data (the C in every formula).
    """

    nc1: float | None = None
    nc1_trace_ratio: float | None = None
    cdnv: float | None = None
    equinorm_means: float | None = None
    equinorm_weights: float | None = None
    equiangular_means: float | None = None
    equiangular_weights: float | None = None
    maxangle_means: float | None = None
    maxangle_weights: float | None = None
    etf_error_means: float | None = None
    etf_error_weights: float | None = None
    self_duality: float | None = None
    self_duality_etf_error: float | None = None
    ncc_mismatch: float | None = None
    ncc_error: float | None = None
    accuracy: float | None = None
    bias_collapse: float | None = None
    hyperspherical_energy_means: float | None = None
    hyperspherical_energy_weights: float | None = None
    hyperspherical_energy_var_means: float | None = None
    hyperspherical_energy_var_weights: float | None = None
    uniform_duality: float | None = None
    ood_orthogonality: float | None = None
    num_classes: int = 0
    num_samples: int = 0
    dim: int = 0
    per_class: PerClassStats | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, float | int | None]:
        """All scalar fields as a plain dict (floats, ints and None only; not ``per_class``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_class"}

    @classmethod
    def field_names(cls) -> list[str]:
        """Names of the scalar fields, in order (not ``per_class``)."""
        return [f.name for f in fields(cls) if f.name != "per_class"]


def nc1_unnormalized(m: NCMetrics) -> float | None:
    """NC1 without the 1/C factor, Tr(Sigma_W Sigma_B^+), as some public code reports it."""
    return None if m.nc1 is None else m.nc1 * m.num_classes


def self_duality_unsquared(m: NCMetrics) -> float | None:
    """NC3 as the plain (not squared) Frobenius distance ||W/||W|| - M/||M|| ||_F."""
    return None if m.self_duality is None else math.sqrt(max(m.self_duality, 0.0))


def equiangular_ordered_pairs(m: NCMetrics) -> tuple[float | None, float | None]:
    """Equiangularity (means, weights) as the ddof=1 std over ordered pairs c != c' (every
    pair counted twice), as some public code computes it, instead of over pairs c < c'."""
    p = m.num_classes * (m.num_classes - 1) // 2
    factor = math.sqrt(2.0 * (p - 1) / (2.0 * p - 1)) if p > 1 else 0.0
    return tuple(None if v is None else v * factor  # type: ignore[return-value]
                 for v in (m.equiangular_means, m.equiangular_weights))

