"""Classifier decisions certified from the anchors' margins (metrics/certify.py).

The decisions must equal a plain float64 argmax of W h + b on every row, whether certified,
scored over class tiles, or near a tie; the certification must actually spare the logits on
collapsed data and switch itself off on uncollapsed data.
"""

from __future__ import annotations

import pytest
import torch

from ncollapse import NCAccumulator, measure
from ncollapse.metrics import certify, updates

pytestmark = pytest.mark.filterwarnings("ignore:feature dimension d")


def _reference(h, y, w, b):
    """Accuracy and NCC mismatch from full float64 matrices (the definitions)."""
    h64, w64 = h.double(), w.double()
    logits = h64 @ w64.T + (0.0 if b is None else b.double())
    pred = logits.argmax(1)
    c = w.shape[0]
    means = torch.stack([h64[y == k].mean(0) for k in range(c)])
    ncc = torch.cdist(h64, means).argmin(1)
    return float((pred == y).double().mean()), float((pred != ncc).double().mean())


def _data(n, d, c, noise, dtype, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.cat([torch.arange(c), torch.randint(0, c, (n - c,), generator=g)])
    scale = noise if torch.is_tensor(noise) else torch.full((n,), float(noise),
                                                                dtype=torch.float64)
    h = means[y] + scale[:, None] * torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.5
    w = means + 0.3 * torch.randn(c, d, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(c, generator=g, dtype=torch.float64) if bias else None
    return h.to(dtype), y, w.to(dtype), None if b is None else b.to(dtype)


@pytest.fixture(params=["fast", "compute-dtype"])
def anchor_scores(request, monkeypatch):
    """The anchors' margins from bfloat16 products (where fast) or in the compute dtype."""
    if request.param == "compute-dtype":
        monkeypatch.setattr(certify, "fast_low_precision", lambda device: False)
    return request.param


@pytest.fixture
def scored_rows(monkeypatch):
    """Counts the rows that pass 2 scores over class tiles (not certified)."""
    seen = {"rows": 0}
    real = updates.classify

    def counting(clf, hc, *args, **kwargs):
        seen["rows"] += hc.shape[0]
        return real(clf, hc, *args, **kwargs)

    monkeypatch.setattr(updates, "classify", counting)
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_collapsed_rows_are_certified_and_exact(dtype, bias, scored_rows, anchor_scores):
    h, y, w, b = _data(3000, 24, 1200, 0.05, dtype, bias=bias)  # C^2 > 2^20: no fused table
    m = measure(h, y, weight=w, bias=b)
    acc, mis = _reference(h, y, w, b)
    assert m.accuracy == acc and m.ncc_mismatch == mis
    # rows whose logits are not needed: at least those certified by construction
    assert scored_rows["rows"] < 0.2 * h.shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_distances_exact(dtype, scored_rows, anchor_scores):
    """Rows from on the anchor to far beyond every radius, and classes whose anchors are
    misclassified (negative margin: never certified), all decided as in float64."""
    g = torch.Generator().manual_seed(3)
    n, d, c = 4000, 16, 80
    noise = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-12, 2, generator=g))
    h, y, w, b = _data(n, d, c, noise, dtype, seed=3)
    w[5] = w[7] + 1e-4 * torch.randn(d, generator=g).to(dtype)  # 5 and 7 nearly tie
    m = measure(h, y, weight=w, bias=b)
    acc, mis = _reference(h, y, w, b)
    assert m.accuracy == acc and m.ncc_mismatch == mis
    assert 0 < scored_rows["rows"] < n


def test_rows_near_a_decision_boundary(scored_rows, anchor_scores):
    """Rows within rounding of a tie between their class and another are never certified
    wrongly: they are far from their anchor, scored, and re-decided in float64."""
    g = torch.Generator().manual_seed(5)
    d, c = 32, 300
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    y = torch.arange(c).repeat(6)
    h = w[y] * 3.0 + 0.01 * torch.randn(y.numel(), d, generator=g, dtype=torch.float64)
    # move 300 rows onto the boundary between their class and the next one (plus a hair)
    k = torch.arange(300)
    yk, other = y[k], (y[k] + 1) % c
    diff = w[yk] - w[other]
    gap = (h[k] * diff).sum(1) + b[yk] - b[other]
    h[k] -= ((gap - 1e-9) / (diff * diff).sum(1))[:, None] * diff
    for dtype in (torch.float32, torch.float64):
        hh, ww, bb = h.to(dtype), w.to(dtype), b.to(dtype)
        m = measure(hh, y, weight=ww, bias=bb)
        acc, mis = _reference(hh, y, ww, bb)
        assert m.accuracy == acc and m.ncc_mismatch == mis


def test_streamed_batches_and_switch_off():
    """Uncollapsed data: certification stops after its trial rows; results unchanged."""
    h, y, w, b = _data(20000, 16, 6000, 30.0, torch.float32, seed=7)
    order = torch.randperm(h.shape[0], generator=torch.Generator().manual_seed(0))
    h, y = h[order], y[order]
    acc = NCAccumulator(num_classes=6000, weight=w, bias=b)
    for i in range(0, h.shape[0], 3000):
        acc.update(h[i:i + 3000], y[i:i + 3000])
    acc.begin_second_pass()
    for i in range(0, h.shape[0], 3000):
        acc.update(h[i:i + 3000], y[i:i + 3000])
    cert = acc._tables.cert
    assert cert is not None and not cert.active
    assert int(cert.known.sum()) < 6000  # the anchors' logits were not all computed
    m = acc.compute()
    ref_acc, ref_mis = _reference(h, y, w, b)
    assert m.accuracy == ref_acc and m.ncc_mismatch == ref_mis
