"""One-shot ``measure()``: every metric of in-memory features."""

from __future__ import annotations

from typing import Any

from ncollapse import validation as V
from ncollapse.metrics.accumulator import NCAccumulator
from ncollapse.metrics.result import NCMetrics

__all__ = ["measure"]


def measure(
    features: Any,
    labels: Any,
    *,
    weight: Any = None,
    bias: Any = None,
    num_classes: int | None = None,
    logits: Any = None,
    ncc_means: Any = None,
    ood_features: Any = None,
    tile_size: int | None = None,
    per_class: bool = False,
) -> NCMetrics:
    """All neural-collapse metrics of in-memory features (N, d) with labels (N,).

    ``weight`` (C, d) and ``bias`` (C,) are the last layer; ``logits`` (N, C), when given,
    supply the classifier's decisions instead of argmax(W h + b). ``ncc_means`` (C, d) makes
    NC4 compare with these centres (e.g. training means on test data) instead of the data's own
    class means. ``ood_features`` (M, d): out-of-distribution features, for
    ``ood_orthogonality``. ``tile_size``: classes per tile of the decisions, and a cap on
    the pairwise statistics' blocks (memory; the results do not depend on it).
    ``per_class=True`` attaches ``NCMetrics.per_class``. Computes on the features' device;
    float64 inputs are measured in float64, others in float32 with float64 accumulation.
    """
    h = V.check_features(features)
    y = V.check_labels(labels, h.shape[0], h.device)
    lg = None if logits is None else V.as_tensor(logits, "logits", h.device)
    w = None if weight is None else V.as_tensor(weight, "weight")
    b = None if bias is None else V.as_tensor(bias, "bias")
    nm = None if ncc_means is None else V.as_tensor(ncc_means, "ncc_means")
    c = V.resolve_num_classes(num_classes, y, w, b, lg, nm)
    acc = NCAccumulator(num_classes=c, weight=w, bias=b, ncc_means=nm, second_pass=True,
                        distributed=False, tile_size=tile_size, per_class=per_class)
    acc.update(h, y)
    if ood_features is not None:
        acc.update_ood(ood_features)
    acc.begin_second_pass()
    acc.update(h, y, lg)
    return acc.compute()
