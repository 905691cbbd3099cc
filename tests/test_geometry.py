"""Simplex ETF construction, checks and Procrustes alignment (ncollapse.geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncollapse import geometry as g


def _check_etf(rows: np.ndarray, scale: float, atol: float = 1e-12) -> None:
    """Properties from the definition, computed independently of etf_gram."""
    c = rows.shape[0]
    norms = np.linalg.norm(rows, axis=1)
    np.testing.assert_allclose(norms, scale, rtol=0, atol=atol * scale)
    cos = (rows @ rows.T) / np.outer(norms, norms)
    off = cos[~np.eye(c, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (c - 1), rtol=0, atol=atol)
    np.testing.assert_allclose(rows.sum(axis=0), 0.0, rtol=0, atol=atol * scale * c)


@pytest.mark.parametrize("c", [2, 3, 5, 10])
@pytest.mark.parametrize("extra", [-1, 0, 1, 7])
def test_simplex_etf_properties_all_dims(c: int, extra: int) -> None:
    d = c + extra
    for kwargs in ({}, {"seed": 3}):
        rows = g.simplex_etf(c, d, scale=2.5, **kwargs)
        assert rows.shape == (c, d) and rows.dtype == np.float64
        _check_etf(rows, 2.5)
        assert g.is_simplex_etf(rows)
        assert np.linalg.matrix_rank(rows) == c - 1


def test_default_dim_and_canonical_form() -> None:
    rows = g.simplex_etf(4)
    assert rows.shape == (4, 4)
    np.testing.assert_allclose(rows, np.sqrt(4 / 3) * (np.eye(4) - 0.25), atol=1e-15)


def test_seed_is_reproducible_and_random() -> None:
    a = g.simplex_etf(5, 9, seed=1)
    np.testing.assert_array_equal(a, g.simplex_etf(5, 9, seed=1))
    assert not np.allclose(a, g.simplex_etf(5, 9, seed=2))
    assert not np.allclose(a, g.simplex_etf(5, 9))


def test_given_rotation_matches_nc_math_formula() -> None:
    c, d, alpha = 6, 11, 0.7
    u = g.random_orthonormal(d, c, seed=0)
    rows = g.simplex_etf(c, scale=alpha, rotation=u)
    # the simplex ETF of [Pap20]: M = α sqrt(C/(C−1)) U (I − 11ᵀ/C), columns are the vectors.
    m = alpha * np.sqrt(c / (c - 1)) * u @ (np.eye(c) - np.ones((c, c)) / c)
    np.testing.assert_allclose(rows, m.T, atol=1e-14)
    # A (d, C−1) frame also works, including d = C−1.
    u2 = g.random_orthonormal(c - 1, c - 1, seed=1)
    _check_etf(g.simplex_etf(c, rotation=torch.from_numpy(u2)), 1.0)


def test_helmert_basis() -> None:
    b = g.helmert_basis(7)
    np.testing.assert_allclose(b.T @ b, np.eye(6), atol=1e-14)
    np.testing.assert_allclose(b @ b.T, np.eye(7) - 1 / 7, atol=1e-14)


def test_etf_gram() -> None:
    c = 5
    rows = g.simplex_etf(c, 8, scale=3.0, seed=4)
    np.testing.assert_allclose(g.etf_gram(c, scale=3.0), rows @ rows.T, atol=1e-12)
    fro = g.etf_gram(c, normalize="frobenius")
    assert np.linalg.norm(fro) == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(fro, g.etf_gram(c) / np.linalg.norm(g.etf_gram(c)), atol=1e-15)
    with pytest.raises(ValueError, match="normalize"):
        g.etf_gram(c, normalize="bogus")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dim >= num_classes - 1"):
        g.simplex_etf(5, 3)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        g.simplex_etf(1)
    with pytest.raises(ValueError, match="either rotation or seed"):
        g.simplex_etf(3, rotation=np.eye(3), seed=0)
    with pytest.raises(ValueError, match="orthonormal"):
        g.simplex_etf(3, rotation=2 * np.eye(3))
    with pytest.raises(ValueError, match="at least num_classes - 1"):
        g.simplex_etf(5, rotation=np.eye(6)[:, :3])
    with pytest.raises(ValueError, match="agree"):
        g.simplex_etf(3, 4, rotation=np.eye(3))
    with pytest.raises(ValueError, match="scale"):
        g.simplex_etf(3, scale=-1.0)
    with pytest.raises(TypeError, match="num_classes"):
        g.simplex_etf(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimension >= 4"):
        g.etf_distance(np.ones((5, 3)))
    with pytest.raises(ValueError, match="NaN/Inf"):
        g.etf_distance(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="all vectors are zero"):
        g.etf_distance(np.ones((3, 4)))


def test_is_simplex_etf_rejects_non_etfs() -> None:
    rows = g.simplex_etf(4, 6, seed=0)
    assert g.is_simplex_etf(rows)
    assert not g.is_simplex_etf(rows + 0.1)  # translated: rows no longer sum to zero
    assert g.is_simplex_etf(rows + 0.1, center=True)
    stretched = rows.copy()
    stretched[0] *= 1.01
    assert not g.is_simplex_etf(stretched)
    assert not g.is_simplex_etf(np.eye(4))  # orthogonal, not equiangular at −1/3
    assert not g.is_simplex_etf(np.ones((5, 3)))  # dim too small


def test_procrustes_recovers_random_rotation_and_scale() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 6))
    q = g.random_orthonormal(6, 6, seed=5)
    fit = g.procrustes(a, 3.7 * a @ q)
    np.testing.assert_allclose(fit.rotation, q, atol=1e-12)
    assert fit.scale == pytest.approx(3.7, rel=1e-13)
    assert fit.residual < 1e-12
    # Embedding into a larger space: rotation with orthonormal rows.
    r = g.random_orthonormal(9, 6, seed=6).T  # (6, 9)
    fit = g.procrustes(torch.from_numpy(a), a @ r, scale=False)
    np.testing.assert_allclose(fit.rotation, r, atol=1e-12)
    assert fit.scale == 1.0
    with pytest.raises(ValueError, match="swap"):
        g.procrustes(a @ r, a)


def test_procrustes_is_optimal_against_random_candidates() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((8, 4)), rng.standard_normal((8, 4))
    fit = g.procrustes(a, b)
    for seed in range(50):
        q = g.random_orthonormal(4, 4, seed=seed)
        s = float(np.sum((a @ q) * b)) / float(np.sum(a * a))  # best scale for this q
        assert fit.residual <= np.linalg.norm(max(s, 0.0) * a @ q - b) + 1e-12


@pytest.mark.parametrize("c,d", [(3, 2), (4, 4), (6, 20)])
def test_etf_distance_zero_on_etf_and_invariant(c: int, d: int) -> None:
    rows = g.simplex_etf(c, d, scale=0.3, seed=7)
    assert g.etf_distance(rows) < 1e-13
    np.testing.assert_allclose(g.nearest_etf(rows), rows, atol=1e-13)
    rng = np.random.default_rng(c + d)
    v = rows + 0.2 * rng.standard_normal((c, d))
    dist = g.etf_distance(v)
    assert 0.01 < dist < 1
    q = g.random_orthonormal(d, d, seed=11)
    offset = rng.standard_normal(d)
    assert g.etf_distance(5.0 * v @ q + offset) == pytest.approx(dist, rel=1e-12)
    assert g.etf_distance(torch.from_numpy(v)) == pytest.approx(dist, rel=1e-15)
    # The aligned ETF is a genuine ETF, and closer than any random rotation of it.
    e = g.nearest_etf(v)
    assert g.is_simplex_etf(e)
    vc = v - v.mean(axis=0)
    assert np.linalg.norm(vc - e) / np.linalg.norm(vc) == pytest.approx(dist, rel=1e-12)
    for seed in range(20):
        other = g.simplex_etf(c, d, scale=np.linalg.norm(e[0]), seed=100 + seed)
        assert np.linalg.norm(vc - other) >= np.linalg.norm(vc - e) - 1e-12


def test_etf_distance_matches_closed_form() -> None:
    # Optimal-scale Procrustes: dist² = 1 − (Σ σ_i(E0ᵀV))² / (‖E0‖² ‖V‖²), E0 any reference ETF.
    rng = np.random.default_rng(2)
    c, d = 5, 7
    v = rng.standard_normal((c, d))
    vc = v - v.mean(axis=0)
    e0 = g.simplex_etf(c, d)
    sv = np.linalg.svd(e0.T @ vc, compute_uv=False)
    expected = np.sqrt(1 - sv.sum() ** 2 / (np.sum(e0**2) * np.sum(vc**2)))
    assert g.etf_distance(v) == pytest.approx(expected, rel=1e-12)
    # Without centring, a translated ETF is not an ETF.
    rows = g.simplex_etf(c, d) + 1.0
    assert g.etf_distance(rows, center=False) > 0.1
    assert g.etf_distance(rows) < 1e-13
