"""One-shot ``measure()``: every metric of in-memory features."""

from __future__ import annotations

from typing import Any

from ncollapse import validation as V
from ncollapse.metrics.accumulator import NCAccumulator
from ncollapse.metrics.kernels import _compute_dtype
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
) -> NCMetrics:
    """All neural-collapse metrics of in-memory features (N, d) with labels (N,).

    ``weight`` (C, d) and ``bias`` (C,) are the last layer; ``logits`` (N, C), when given,
    supply the classifier's decisions instead of argmax(W h + b). ``ncc_means`` (C, d) makes
    NC4 compare with these centres (e.g. training means on test data) instead of the data's own
    class means. Computes on the features' device; float64 inputs are measured in float64,
    others in float32 with float64 accumulation.
    """
    h = V.check_features(features)
    y = V.check_labels(labels, h.shape[0], h.device)
    lg = None if logits is None else V.as_tensor(logits, "logits", h.device)
    w = None if weight is None else V.as_tensor(weight, "weight")
    b = None if bias is None else V.as_tensor(bias, "bias")
    nm = None if ncc_means is None else V.as_tensor(ncc_means, "ncc_means")
    c = V.resolve_num_classes(num_classes, y, w, b, lg, nm)
    V.check_label_range(y, c)
    acc = NCAccumulator(num_classes=c, weight=w, bias=b, ncc_means=nm)
    acc._track_scatter = False
    acc._classify_pass1 = False
    acc._local = True
    h = h.to(dtype=_compute_dtype(h.dtype))
    acc._init(h, None)
    acc._ingest(h, y, None)  # inputs checked once above, for both passes
    acc.begin_second_pass()
    if lg is not None:
        lg = V.check_logits(lg, h.shape[0], c, h.device)
    acc._ingest(h, y, lg)
    return acc.compute()
