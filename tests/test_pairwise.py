"""pairwise_stats against the plain full-matrix definitions (float64 numpy, C x C matrices and
explicit differences), on random and on numerically hard inputs, at block sizes that do not
divide C."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncollapse.metrics.pairwise import PAIR_TILE, pairwise_stats

C = 300
TILES = (7, 64, 128, 4096)  # 4096: one block of all rows (capped at PAIR_TILE)


def full_reference(x: np.ndarray) -> dict:
    """Every statistic from its definition: full C x C matrices, distances from differences."""
    c = x.shape[0]
    norms = np.sqrt((x * x).sum(1))
    u = x / norms[:, None]
    i, j = np.triu_indices(c, 1)
    cos = (u @ u.T)[i, j]
    g = x @ x.T
    target = (np.eye(c) - np.ones((c, c)) / c) / np.sqrt(c - 1)
    udist = np.empty((c, c))
    xsq = np.empty((c, c))
    for k in range(c):
        udist[k] = np.sqrt(((u[k] - u) ** 2).sum(1))
        xsq[k] = ((x[k] - x) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):  # coincident rows: infinite terms
        kernel = np.log(1.0 / udist[i, j])
        inv = 1.0 / xsq
        np.fill_diagonal(inv, 0.0)
        np.fill_diagonal(xsq, np.inf)
        return {
            "equinorm": norms.std(ddof=1) / norms.mean(),
            "equiangular": cos.std(ddof=1) if cos.size > 1 else None,
            "maxangle": np.abs(cos + 1.0 / (c - 1)).mean(),
            "etf_error": np.linalg.norm(g / np.linalg.norm(g) - target),
            "energy": kernel.mean(),
            "energy_var": kernel.var(),
            "inv_dist": inv.sum(1),
            "nearest_sq": xsq.min(1),
        }


def check(x: np.ndarray, rtol: float, dist_rtol: float | None = None) -> None:
    ref = full_reference(x)
    for tile in TILES:
        for distances in (False, True):
            got = pairwise_stats(torch.from_numpy(x), tile, distances=distances)
            for key in ("equinorm", "equiangular", "maxangle", "etf_error", "energy",
                        "energy_var"):
                assert getattr(got, key) == pytest.approx(ref[key], rel=rtol), (key, tile)
            if distances:
                for key in ("inv_dist", "nearest_sq"):
                    np.testing.assert_allclose(getattr(got, key).numpy(), ref[key],
                                               rtol=dist_rtol or rtol, err_msg=key)
            else:
                assert got.inv_dist is None and got.nearest_sq is None


def simplex(c: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """C unit rows of a simplex ETF in a random C-dimensional subspace of R^d (d >= C)."""
    basis, _ = np.linalg.qr(rng.standard_normal((d, c)))
    m = (np.eye(c) - 1.0 / c) * np.sqrt(c / (c - 1))
    return m @ basis.T


@pytest.mark.parametrize("d", [16, 400])  # C - 1 > d and C - 1 <= d
def test_random_rows(d):
    x = np.random.default_rng(d).standard_normal((C, d)) + 0.3
    check(x, 1e-10)


def test_near_simplex_etf():
    """Cosines all -1/(C-1) up to 1e-7: the ETF error is ~1e-7 (no cancellation in A)."""
    rng = np.random.default_rng(1)
    x = 3.0 * simplex(C, 400, rng) + 3e-7 * rng.standard_normal((C, 400))
    ref = full_reference(x)
    assert 1e-8 < ref["etf_error"] < 1e-5 and ref["equiangular"] < 1e-6
    check(x, 1e-6)


def test_large_common_component_near_etf():
    """Cosines all 0.9 with a spread of ~1e-7: squares about zero would lose every digit."""
    rng = np.random.default_rng(2)
    rows = simplex(C, 399, rng)
    x = np.hstack([np.full((C, 1), 3.0), rows]) + 1e-7 * rng.standard_normal((C, 400))
    ref = full_reference(x)
    assert abs(ref["maxangle"] - 0.9) < 0.01
    assert ref["equiangular"] < 1e-6
    check(x, 1e-6)


def test_large_common_component_more_rows_than_dimensions():
    """C - 1 > d, cosines ~ 1 - 1e-6 with a spread of ~1e-7; distances cancel (~1e6 - 1e6)."""
    rng = np.random.default_rng(3)
    r = rng.standard_normal((C, 16))
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    x = r + 1000.0 * rng.standard_normal(16)
    ref = full_reference(x)
    assert ref["equiangular"] < 1e-6
    check(x, 1e-7, dist_rtol=1e-7)


@pytest.mark.parametrize("d", [16, 400])
def test_coincident_pair_gives_infinite_energy(d):
    """Two equal rows: energy and its variance +inf, their distance 0, inv_dist inf."""
    x = np.random.default_rng(4).standard_normal((C, d))
    x[5] = x[17] = 0.0
    x[5, 0] = x[17, 0] = 2.0
    ref = full_reference(x)
    assert ref["energy"] == math.inf
    for tile in TILES:
        got = pairwise_stats(torch.from_numpy(x), tile, distances=True)
        assert got.energy == math.inf and got.energy_var == math.inf
        assert got.nearest_sq[5] == 0.0 and got.nearest_sq[17] == 0.0
        assert got.inv_dist[5] == math.inf and got.inv_dist[17] == math.inf
        finite = np.isfinite(ref["inv_dist"])
        assert finite.sum() == C - 2
        np.testing.assert_allclose(got.inv_dist.numpy()[finite], ref["inv_dist"][finite],
                                   rtol=1e-10)
        for key in ("equiangular", "maxangle", "etf_error"):
            assert getattr(got, key) == pytest.approx(ref[key], rel=1e-10), key


def test_two_and_three_rows():
    for c in (2, 3):
        x = np.random.default_rng(c).standard_normal((c, 5))
        ref = full_reference(x)
        got = pairwise_stats(torch.from_numpy(x), distances=True)
        assert (got.equiangular is None) == (c == 2)
        if c == 3:
            assert got.equiangular == pytest.approx(ref["equiangular"], rel=1e-12)
        for key in ("maxangle", "etf_error", "energy", "energy_var"):
            assert getattr(got, key) == pytest.approx(ref[key], rel=1e-12, abs=1e-15), key


def test_blocks_are_capped_for_the_cache(monkeypatch):
    """A large ``tile`` bounds the block; the blocks themselves stay at most PAIR_TILE rows."""
    shapes = []
    real_mm = torch.mm

    def spy(a, b, **kw):
        shapes.append((a.shape[0], b.shape[1]))
        return real_mm(a, b, **kw)

    monkeypatch.setattr(torch, "mm", spy)
    x = torch.randn(PAIR_TILE + 100, 8, dtype=torch.float64)
    pairwise_stats(x, 10**6)
    assert max(max(s) for s in shapes) == PAIR_TILE and len(shapes) == 3
