"""Decisions from bfloat16 scores (kernels.LowPrecision): logits and nearest-centre scores of
uncertified rows are taken in bfloat16 where that is fast, with their rounding bound, and
rows near a tie are decided again in float64. The decisions must equal a plain float64
computation either way, including rows on a decision boundary; and the bfloat16 path must
switch itself off when most rows are too close to a tie for it.
"""

from __future__ import annotations

import pytest
import torch

from ncollapse import NCAccumulator, measure
from ncollapse.metrics import certify, updates

pytestmark = pytest.mark.filterwarnings("ignore:feature dimension d")


@pytest.fixture(params=["bfloat16", "compute-dtype"])
def scores(request, monkeypatch):
    """Force the bfloat16 scores on (any CPU can run them, if slowly) or off."""
    on = request.param == "bfloat16"
    monkeypatch.setattr(updates, "fast_low_precision", lambda device: on)
    monkeypatch.setattr(certify, "fast_low_precision", lambda device: on)
    return request.param


def _reference(h, y, w, b, centres=None):
    h64, w64 = h.double(), w.double()
    pred = (h64 @ w64.T + (0.0 if b is None else b.double())).argmax(1)
    c = w.shape[0]
    if centres is None:
        centres = torch.stack([h64[y == k].mean(0) for k in range(c)])
    ncc = torch.cdist(h64, centres.double()).argmin(1)
    return float((pred == y).double().mean()), float((pred != ncc).double().mean())


def _uncollapsed(n, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.cat([torch.arange(c), torch.randint(0, c, (n - c,), generator=g)])
    h = means[y] + 1.2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = means + 0.5 * torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    return h.float(), y, w.float(), b.float()


@pytest.mark.parametrize("c", [40, 1500])  # the few-class table path and class tiles
def test_uncollapsed_decisions_exact(c, scores):
    h, y, w, b = _uncollapsed(12000, 24, c, seed=c)
    m = measure(h, y, weight=w, bias=b)
    acc, mis = _reference(h, y, w, b)
    assert m.accuracy == acc and m.ncc_mismatch == mis
    assert 0.05 < acc < 0.95  # uncollapsed: decisions are not trivial


def test_given_centres_exact(scores):
    h, y, w, b = _uncollapsed(6000, 16, 300, seed=2)
    centres = torch.randn(300, 16, generator=torch.Generator().manual_seed(9))
    m = measure(h, y, weight=w, bias=b, ncc_means=centres)
    acc, mis = _reference(h, y, w, b, centres)
    assert m.accuracy == acc and m.ncc_mismatch == mis


def test_rows_on_boundaries_exact(scores):
    """Rows moved to within 1e-6 of a tie between two logits (far below bfloat16's
    resolution, above float32's): decided as in float64."""
    h, y, w, b = _uncollapsed(5000, 32, 1200, seed=4)
    h64, w64, b64 = h.double(), w.double(), b.double()
    k = torch.arange(2000)
    other = (y[k] + 7) % 1200
    diff = w64[y[k]] - w64[other]
    gap = (h64[k] * diff).sum(1) + b64[y[k]] - b64[other]
    sign = torch.where(k % 2 == 0, 1.0, -1.0).double()
    h64[k] -= ((gap - sign * 1e-6) / (diff * diff).sum(1))[:, None] * diff
    h = h64.float()
    m = measure(h, y, weight=w, bias=b)
    acc, mis = _reference(h, y, w, b)
    assert m.accuracy == acc and m.ncc_mismatch == mis


def test_rows_on_nearest_centre_boundaries_exact(scores):
    """Rows moved to within 1e-6 of the bisector of their two nearest class means (a partner
    row of the same class moved the opposite way, so the means stay): the nearest-centre
    decisions are those of float64."""
    h, y, w, b = _uncollapsed(6000, 24, 1200, seed=8)
    h64 = h.double()
    means = torch.stack([h64[y == k].mean(0) for k in range(1200)])
    moved = 0
    for k in range(1000):
        rows = torch.nonzero(y == k).flatten()
        if rows.numel() < 2:
            continue
        i, j = int(rows[0]), int(rows[1])
        a, o = torch.cdist(h64[i:i + 1], means)[0].topk(2, largest=False).indices.tolist()
        normal = means[o] - means[a]
        mid = 0.5 * (means[o] + means[a])
        side = (1.0 if k % 2 else -1.0) * 1e-6 / normal.norm()
        target = h64[i] - ((h64[i] - mid) @ normal / (normal @ normal) - side) * normal
        h64[j] += h64[i] - target
        h64[i] = target
        moved += 1
    assert moved > 500
    h = h64.float()
    m = measure(h, y, weight=w, bias=b)
    acc, mis = _reference(h, y, w, b)
    assert m.accuracy == acc and m.ncc_mismatch == mis


def test_switches_off_when_scores_are_too_close(monkeypatch):
    """Classifier rows nearly equal: every row is within bfloat16 rounding of a tie, so the
    bfloat16 scores are given up after their trial rows; decisions stay exact."""
    monkeypatch.setattr(updates, "fast_low_precision", lambda device: True)
    g = torch.Generator().manual_seed(5)
    n, d, c = 20000, 16, 1100
    y = torch.cat([torch.arange(c), torch.randint(0, c, (n - c,), generator=g)])
    y = y[torch.randperm(n, generator=g)]
    h = torch.randn(n, d, generator=g) * 3.0
    w = torch.randn(d, generator=g) + 1e-3 * torch.randn(c, d, generator=g)
    acc = NCAccumulator(num_classes=c, weight=w)
    for _ in range(2):
        for i in range(0, n, 4000):
            acc.update(h[i:i + 4000], y[i:i + 4000])
        if acc.phase == 1:
            acc.begin_second_pass()
    used = {k: lp for k, lp in acc._tables.low.items() if lp.rows}
    assert used  # the logits alone, or jointly with the nearest-centre scores (two per row)
    for key, low in used.items():
        assert not low.on and low.rows < (2 if key == "joint" else 1) * n, key
    m = acc.compute()
    ref_acc, ref_mis = _reference(h, y, w, None)
    assert m.accuracy == ref_acc and m.ncc_mismatch == ref_mis


def test_one_pass_accuracy_exact(scores):
    """Without a second pass the decisions are taken in pass 1 (same scores, same check)."""
    h, y, w, b = _uncollapsed(9000, 20, 1300, seed=6)
    acc = NCAccumulator(num_classes=1300, weight=w, bias=b)
    for i in range(0, h.shape[0], 2500):
        acc.update(h[i:i + 2500], y[i:i + 2500])
    assert acc.compute().accuracy == _reference(h, y, w, b)[0]
