"""Features in an affine hyperplane (LayerNorm outputs): NC1 against the float64 reference."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ncollapse import NCAccumulator, measure

sys.path.insert(0, str(Path(__file__).parent))
from reference import reference_metrics  # noqa: E402


def _layernorm_like(seed: int = 0):
    """h = beta + gamma * z with sum(z) = 0 per row (a LayerNorm output), float32: Sigma_B has
    one exactly-null direction that only float32 rounding fills. d = 32, 320 classes of which
    130 are present (C > d), imbalanced; the classifier is the means plus noise."""
    rng = np.random.default_rng(seed)
    n, d, c = 4000, 32, 320
    present = rng.choice(c, 130, replace=False)
    means = 2.0 * rng.standard_normal((c, d))
    p = rng.uniform(1.0, 5.0, present.size)
    labels = present[rng.choice(present.size, n, p=p / p.sum())]
    labels[:present.size] = present
    z = means[labels] + rng.standard_normal((n, d))
    z -= z.mean(1, keepdims=True)
    z /= z.std(1, keepdims=True)
    gamma, beta = rng.uniform(0.5, 2.0, d), rng.standard_normal(d)
    h = (beta + gamma * z).astype(np.float32)
    weight = (means + 0.3 * rng.standard_normal((c, d))).astype(np.float32)
    return torch.from_numpy(h), torch.from_numpy(labels), torch.from_numpy(weight), c


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_float32_hyperplane_features_nc1_matches_reference():
    """measure() and the streamed two-pass accumulator, float32, agree with the float64
    reference; before the rank cut at the input precision NC1 divided rounding noise by
    rounding noise (off by orders of magnitude, or negative)."""
    h, y, w, c = _layernorm_like()
    ref = reference_metrics(h, y, weight=w, num_classes=c)["nc1"]
    assert ref > 0
    got = measure(h, y, weight=w, num_classes=c).nc1
    acc = NCAccumulator(num_classes=c, weight=w)
    for _ in range(2):
        for i in range(0, h.shape[0], 512):
            hb, yb = h[i:i + 512], y[i:i + 512]
            acc.update(hb, yb, logits=hb @ w.T)
        if acc.phase == 1:
            acc.begin_second_pass()
    streamed = acc.compute().nc1
    assert got == pytest.approx(ref, rel=1e-4)
    assert streamed == pytest.approx(ref, rel=1e-4)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_float64_hyperplane_features_nc1_matches_reference():
    """The same features cast to float64: the rounding-filled direction is below the float64
    rank cut too, so float64 and float32 measurements agree with the reference."""
    h, y, w, c = _layernorm_like(seed=1)
    ref = reference_metrics(h, y, weight=w, num_classes=c)["nc1"]
    got = measure(h.double(), y, weight=w.double(), num_classes=c).nc1
    assert got == pytest.approx(ref, rel=1e-6)
