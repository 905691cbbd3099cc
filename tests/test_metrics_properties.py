"""Property tests (hypothesis): invariances of the metrics, batch splitting, exact collapse."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ncollapse import NCAccumulator, measure

sys.path.insert(0, str(Path(__file__).parent))
from reference import simplex_etf, synthetic  # noqa: E402

SETTINGS = settings(max_examples=15, deadline=None)


@st.composite
def datasets(draw):
    c = draw(st.integers(2, 7))
    d = draw(st.integers(c, 14))
    n = draw(st.integers(3 * c, 120))
    sigma = draw(st.sampled_from([1.0, 0.1, 1e-3]))
    seed = draw(st.integers(0, 10_000))
    imbalanced = draw(st.booleans())
    return synthetic(n, d, c, sigma, imbalanced=imbalanced, seed=seed)


def close(a, b, rtol, atol=1e-12):
    """Relative agreement; atol covers values that are zero up to rounding (O(1) scale)."""
    if a is None or b is None:
        return a is b
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + atol


def orthogonal(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))


GEOMETRY_KEYS = ("nc1", "nc1_trace_ratio", "cdnv", "equinorm_means", "equiangular_means",
                 "maxangle_means", "etf_error_means", "self_duality", "self_duality_etf_error",
                 "equinorm_weights", "equiangular_weights", "etf_error_weights",
                 "maxangle_weights", "hyperspherical_energy_means",
                 "hyperspherical_energy_var_means", "hyperspherical_energy_weights",
                 "hyperspherical_energy_var_weights", "uniform_duality", "ood_orthogonality")


@SETTINGS
@given(datasets(), st.integers(0, 1000), st.floats(1e-3, 1e3), st.floats(-1e3, 1e3))
def test_nc1_invariant_to_rotation_scaling_translation(data, seed, scale, shift):
    h, y, w, b = data
    q = orthogonal(h.shape[1], seed)
    t = shift * np.random.default_rng(seed + 1).standard_normal(h.shape[1])
    ood = np.random.default_rng(seed + 2).standard_normal((20, h.shape[1])) + 0.5
    base = measure(h, y, weight=w, bias=b, ood_features=ood)
    moved = measure(scale * h @ q.T + t, y, weight=w @ q.T, bias=b,
                    ood_features=scale * ood @ q.T + t)
    for key in GEOMETRY_KEYS:
        assert close(getattr(base, key), getattr(moved, key), 1e-7), key


@SETTINGS
@given(datasets(), st.integers(0, 1000), st.integers(-8, 8), st.floats(-1e3, 1e3))
def test_decisions_invariant_to_similarity_transforms(data, seed, log2_scale, shift):
    """h -> s P h + t with P a signed permutation and s a power of two (both exact in floating
    point), W -> W P^T, b -> s b - W P^T t: logits scale by s > 0, so the classifier's
    decisions, the nearest class centres and every fraction of samples stay the same."""
    h, y, w, b = data
    d = h.shape[1]
    rng = np.random.default_rng(seed)
    p = np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], size=d)[:, None]
    s = 2.0 ** log2_scale
    t = shift * rng.standard_normal(d)
    w2 = w @ p.T
    base = measure(h, y, weight=w, bias=b)
    moved = measure(s * h @ p.T + t, y, weight=w2, bias=s * b - w2 @ t)
    assert base.accuracy is not None and base.ncc_mismatch is not None
    assert moved.accuracy == base.accuracy
    assert moved.ncc_mismatch == base.ncc_mismatch
    assert moved.ncc_error == base.ncc_error


@SETTINGS
@given(datasets(), st.integers(0, 1000))
def test_class_permutation(data, seed):
    h, y, w, b = data
    c = w.shape[0]
    perm = np.random.default_rng(seed).permutation(c)  # old class k -> new class perm[k]
    w_new = np.empty_like(w)
    w_new[perm] = w
    b_new = np.empty_like(b)
    b_new[perm] = b
    base = measure(h, y, weight=w, bias=b).to_dict()
    permuted = measure(h, perm[y], weight=w_new, bias=b_new).to_dict()
    for key, val in base.items():
        assert close(val, permuted[key], 1e-9), key


@SETTINGS
@given(datasets(), st.lists(st.integers(1, 60), min_size=1, max_size=6),
       st.sampled_from([np.float64, np.float32]))
def test_batch_splitting(data, sizes, dtype):
    h, y, w, b = data
    h = h.astype(dtype)
    cuts = np.cumsum([0, *sizes])
    cuts = np.unique(np.clip(cuts, 0, len(y)))
    if cuts[-1] != len(y):
        cuts = np.append(cuts, len(y))
    acc = NCAccumulator(num_classes=w.shape[0], weight=w, bias=b)
    for p in (1, 2):
        if p == 2:
            acc.begin_second_pass()
        for a, z in zip(cuts[:-1], cuts[1:], strict=True):
            acc.update(h[a:z], y[a:z])
    got = acc.compute().to_dict()
    want = measure(h, y, weight=w, bias=b).to_dict()
    rtol = 1e-9 if dtype == np.float64 else 1e-6
    # uniform_duality is std / mean of cosines (close to 1 here): its relative condition number
    # is about 1 / value, so with float32 inputs (cosines good to ~1e-8 whatever the batching)
    # it is held to an absolute 1e-7 as well (seen: 0.0058059906 against 0.0058059839)
    atol = {"uniform_duality": 1e-7} if dtype == np.float32 else {}
    for key, val in want.items():
        assert close(got[key], val, rtol, atol.get(key, 1e-12)), (key, got[key], val)


@SETTINGS
@given(st.integers(2, 8), st.integers(0, 6), st.integers(1, 5), st.integers(0, 1000),
       st.floats(0.1, 100.0), st.booleans())
def test_exact_zeros_on_collapsed_features(c, extra_dim, per, seed, scale, imbalanced):
    d = c - 1 + extra_dim if c > 2 else 1 + extra_dim + 1
    means = simplex_etf(c, d, seed=seed, scale=scale)
    counts = np.full(c, per)
    if imbalanced:
        counts = counts + np.arange(c)  # unequal class sizes
    y = np.repeat(np.arange(c), counts)
    m = measure(means[y], y, weight=means * 0.5)
    assert m.nc1 == 0.0 and m.cdnv == 0.0 and m.ncc_mismatch == 0.0 and m.accuracy == 1.0
    assert m.ncc_error == 0.0
    tol = 1e-12
    keys = ["equinorm_weights", "maxangle_weights", "etf_error_weights",
            "hyperspherical_energy_var_weights"]
    if not imbalanced:  # imbalance moves mu_G off the ETF centre; the weights stay an ETF
        keys += ["equinorm_means", "maxangle_means", "etf_error_means", "self_duality",
                 "self_duality_etf_error", "hyperspherical_energy_var_means", "uniform_duality"]
        assert abs(m.bias_collapse) <= tol * scale
    for key in keys:
        assert abs(getattr(m, key)) <= tol, key
    # on a simplex ETF every pair is at distance sqrt(2C/(C-1)) on the unit sphere
    etf_energy = -0.5 * math.log(2.0 * c / (c - 1))
    assert close(m.hyperspherical_energy_weights, etf_energy, 1e-12)
    if c > 2:
        assert abs(m.equiangular_weights) <= tol
