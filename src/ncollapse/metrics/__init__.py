"""Neural-collapse metrics: ``NCMetrics``, one-shot ``measure()``, streaming ``NCAccumulator``.

Definitions and conventions: docs/metrics.md (formulas from Papyan, Han & Donoho 2020 and the
papers cited there). Numerics in short: every class gets a shift s_c (one of its own samples,
exactly representable in the input dtype), features are only ever used as differences
h - s_y or h - mu_y computed in the input dtype (no digits lost to a common offset), and all
sums are accumulated in float64. NC1 and the nearest-class-centre decisions use projections
onto the span of the centred class means, so no d x d matrix is ever formed (unless
``full_covariance=True``).

Modules: ``result`` (NCMetrics and alternative conventions), ``accumulator`` (NCAccumulator),
``kernels`` (numeric kernels), ``measure`` (the one-shot function), ``decomposition``
(the MSE loss decomposition of Han, Papyan & Donoho 2022).
"""

from ncollapse.metrics.accumulator import NCAccumulator
from ncollapse.metrics.decomposition import least_squares_classifier, mse_decomposition
from ncollapse.metrics.kernels import class_means
from ncollapse.metrics.measure import measure
from ncollapse.metrics.result import (
    NCMetrics,
    equiangular_ordered_pairs,
    nc1_unnormalized,
    self_duality_unsquared,
)

__all__ = [
    "NCMetrics",
    "NCAccumulator",
    "measure",
    "nc1_unnormalized",
    "self_duality_unsquared",
    "equiangular_ordered_pairs",
    "mse_decomposition",
    "least_squares_classifier",
    "class_means",
]
