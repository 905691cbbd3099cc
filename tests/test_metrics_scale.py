"""Many classes: C > d against the float64 reference, tiled = untiled, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ncollapse import NCAccumulator, measure

sys.path.insert(0, str(Path(__file__).parent))
from reference import reference_metrics, synthetic  # noqa: E402
from test_metrics import assert_matches  # noqa: E402


@pytest.mark.filterwarnings("ignore:feature dimension d = 128 is smaller")
def test_more_classes_than_dimensions_matches_reference():
    """C = 5,000 classes in d = 128 (no simplex ETF possible, Sigma_B of rank d), imbalanced,
    offset, with classifier, bias and out-of-distribution features: every metric."""
    c, d = 5000, 128
    h, y, w, b = synthetic(10_000, d, c, 0.5, imbalanced=True, offset=10.0, seed=3)
    ood = np.random.default_rng(4).standard_normal((300, d)) + 10.2
    ref = reference_metrics(h, y, w, b, ood_features=ood)
    got = measure(h, y, weight=w, bias=b, ood_features=ood, tile_size=1536).to_dict()
    assert got["num_classes"] == c and 0.0 < got["ncc_mismatch"] < 1.0
    assert_matches(got, ref, 1e-9)


def _variants(tile: int | None) -> list[dict]:
    h, y, w, b = synthetic(600, 16, 60, 0.8, imbalanced=True, offset=5.0, seed=12)
    y[y == 7] = 8  # one absent class
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((60, 16)) + 5.0
    logits = h @ w.T + b + 0.3 * rng.standard_normal((600, 60))
    ood = rng.standard_normal((50, 16)) + 5.0
    out = [measure(h, y, weight=w, bias=b, ood_features=ood, tile_size=tile).to_dict(),
           measure(h, y, weight=w, ncc_means=centres, tile_size=tile).to_dict(),
           measure(h, y, weight=w, bias=b, logits=logits, tile_size=tile).to_dict(),
           measure(h.astype(np.float32), y, weight=w, bias=b, tile_size=tile).to_dict()]
    acc = NCAccumulator(num_classes=60, weight=w, bias=b, full_covariance=True, tile_size=tile)
    for s in range(0, 600, 128):  # streaming: pass-1 decisions over class tiles
        acc.update(h[s:s + 128], y[s:s + 128])
    out.append(acc.compute().to_dict())
    return out


@pytest.mark.filterwarnings("ignore:1 of 60 classes have no samples")
@pytest.mark.filterwarnings("ignore:feature dimension d = 16 is smaller")
@pytest.mark.parametrize("tile", [1, 7])
def test_tiled_and_untiled_agree(tile):
    """Tiles of pairs and of classes change the order of float64 sums only."""
    for tiled, whole in zip(_variants(tile), _variants(None), strict=True):
        for key, val in whole.items():
            if val is None or key in ("num_classes", "num_samples", "dim"):
                assert tiled[key] == val, key
            else:
                assert tiled[key] == pytest.approx(val, rel=1e-9, abs=1e-15), key


def test_accumulator_rejects_bad_tile_size():
    with pytest.raises(ValueError, match="tile_size must be a positive int"):
        NCAccumulator(num_classes=3, tile_size=0)


_MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys, warnings
    import torch
    from ncollapse import measure
    torch.set_num_threads(1)
    c, d, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.arange(c), torch.randint(0, c, (n - c,), generator=g)])
    means = torch.randn(c, d, generator=g)
    h = means[y] + 0.3 * torch.randn(n, d, generator=g)
    w = means + 0.1 * torch.randn(c, d, generator=g)
    measure(h[:2000], y[:2000] % 50, weight=w[:50])  # warm-up: libraries, thread pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = measure(h, y, weight=w)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"growth": after - before, "classes": m.num_classes}))
""")


def test_memory_stays_far_below_a_class_by_class_matrix():
    """C = 12,000: one C x C float64 matrix would be 1.15 GB; the measurement's peak memory
    grows by less than an eighth of that (tiles of pairs and of classes, no C x C tensor)."""
    c, d, n = 12_000, 32, 24_000
    res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(c), str(d), str(n)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["classes"] == c
    assert out["growth"] < c * c * 8 / 8, (
        f"peak memory grew by {out['growth'] / 2**20:.0f} MiB during measure() at C = {c}")


def test_one_shot_uses_tiles_by_default_at_large_class_counts(monkeypatch):
    """Without tile_size, pairwise work and decisions still run in blocks (no C x C product)."""
    from ncollapse.metrics import kernels, pairwise

    biggest = []
    real_matmul, real_mm = torch.Tensor.__matmul__, torch.mm

    def record(out):
        if out.ndim == 2:
            biggest.append(out.shape[0] * out.shape[1])
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: record(real_matmul(a, b)))
    monkeypatch.setattr(torch, "mm", lambda a, b, **kw: record(real_mm(a, b, **kw)))
    c = 3000
    h, y, w, b = synthetic(c * 2, 8, c, 0.3, seed=1)
    with pytest.warns(UserWarning, match="smaller than C - 1"):
        measure(h, y, weight=w, bias=b)
    assert max(biggest) <= max(pairwise.DEFAULT_TILE ** 2, kernels._SCORE_ELEMS)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 1e-6)])
def test_nc1_from_scatter_equals_nc1_from_projections(dtype, rtol):
    """k = C - 1 > 0.6 d: NC1 from the blocked sum of x x^T; per_class=True keeps per-row
    projections (per-class NC1 terms). Same numbers, same decisions."""
    h, y, w, b = synthetic(3000, 32, 30, 0.4, imbalanced=True, offset=100.0, seed=6, dtype=dtype)
    fast = measure(h, y, weight=w, bias=b)
    rows = measure(h, y, weight=w, bias=b, per_class=True)
    assert rows.per_class is not None and fast.per_class is None
    assert fast.nc1 == pytest.approx(rows.nc1, rel=rtol)
    for key, val in rows.to_dict().items():
        assert fast.to_dict()[key] == (val if val is None else pytest.approx(val, rel=rtol)), key
    assert_matches(fast.to_dict(), reference_metrics(h, y, w, b), rtol)
