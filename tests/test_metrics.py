"""ncollapse.measure against the independent float64 reference, exact zeros, bad input."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ncollapse import NCAccumulator, NCMetrics, measure
from ncollapse.metrics import (
    equiangular_ordered_pairs,
    nc1_unnormalized,
    self_duality_unsquared,
)

sys.path.insert(0, str(Path(__file__).parent))
from reference import reference_metrics, simplex_etf, synthetic  # noqa: E402

FLOAT_KEYS = [f for f in NCMetrics.field_names() if f not in ("num_classes", "num_samples", "dim")]
EXACT_KEYS = ("ncc_mismatch", "accuracy")


def assert_matches(got: dict, ref: dict, rtol: float, keys=None) -> None:
    """Every metric within rtol of the reference (fractions of samples exactly equal)."""
    for key in keys or ref:
        g, r = got[key], ref[key]
        if r is None:
            assert g is None, f"{key}: expected None, got {g}"
            continue
        assert g is not None, f"{key}: got None, expected {r}"
        if key in EXACT_KEYS or key in ("num_classes", "num_samples", "dim"):
            assert g == r, f"{key}: {g} != {r}"
        else:
            assert abs(g - r) <= rtol * abs(r) + 1e-300, (
                f"{key}: {g!r} vs reference {r!r}, rel. error {abs(g - r) / abs(r):.3g}")


# NC1 is about 0.35 * sigma^2 for these data: sigma = 1.7e-5 gives NC1 ~ 1e-10.
SIGMAS = [1.0, 1e-2, 1e-4, 1.7e-5]


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 1e-6)])
@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("imbalanced", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_accuracy_grid(dtype, rtol, sigma, imbalanced, offset):
    h, y, w, b = synthetic(1200, 24, 6, sigma, imbalanced=imbalanced, offset=offset, seed=1,
                           dtype=dtype)
    ref = reference_metrics(h, y, w, b)
    got = measure(torch.from_numpy(h), torch.from_numpy(y), weight=w, bias=b).to_dict()
    if dtype == np.float64 and offset == 0.0:
        assert ref["nc1"] == pytest.approx(0.35 * sigma**2, rel=0.3)  # grid covers 1 .. 1e-10
    assert_matches(got, ref, rtol)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-9), (np.float32, 1e-6)])
def test_accuracy_many_classes_high_dim(dtype, rtol):
    """C = 40 in d = 64 (wide Sigma_B spectrum), imbalanced, offset."""
    h, y, w, b = synthetic(2000, 64, 40, 0.3, imbalanced=True, offset=50.0, seed=3, dtype=dtype)
    assert_matches(measure(h, y, weight=w, bias=b).to_dict(), reference_metrics(h, y, w, b), rtol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    h, y, w, b = synthetic(800, 16, 5, 0.5, seed=4)
    h16 = torch.from_numpy(h).to(dtype)
    ref = reference_metrics(h16.double(), y, w, b)
    assert_matches(measure(h16, y, weight=w, bias=b).to_dict(), ref, 1e-6)


def test_logits_and_ncc_means():
    """Decisions from given logits; NC4 against given centres (training means on test data)."""
    h, y, w, b = synthetic(900, 20, 6, 0.8, seed=5)
    ht, yt, _, _ = synthetic(500, 20, 6, 0.8, seed=5)
    rng = np.random.default_rng(1)
    train_means = np.stack([h[y == c].mean(0) for c in range(6)])
    train_means += 0.5 * rng.standard_normal(train_means.shape)  # centres not the data's own
    logits = ht @ w.T + b + 0.05 * rng.standard_normal((500, 6))
    ref = reference_metrics(ht, yt, w, b, logits=logits, ncc_means=train_means)
    got = measure(ht, yt, weight=w, bias=b, logits=logits, ncc_means=train_means).to_dict()
    assert_matches(got, ref, 1e-9)
    ref_own = reference_metrics(ht, yt, w, b, logits=logits)
    assert got["ncc_mismatch"] != ref_own["ncc_mismatch"]  # the option changes NC4
    only_logits = measure(ht, yt, logits=logits).to_dict()
    assert only_logits["accuracy"] == ref["accuracy"]
    assert only_logits["self_duality"] is None and only_logits["bias_collapse"] is None


def test_without_classifier_fields_are_none():
    h, y, _, _ = synthetic(300, 8, 4, 0.5)
    m = measure(h, y)
    for key in ("accuracy", "ncc_mismatch", "equinorm_weights", "self_duality",
                "self_duality_etf_error", "bias_collapse", "etf_error_weights"):
        assert getattr(m, key) is None
    assert m.nc1 is not None and m.cdnv is not None
    assert m.num_classes == 4 and m.num_samples == 300 and m.dim == 8


def test_to_dict_and_alternative_conventions():
    h, y, w, b = synthetic(400, 10, 5, 0.5)
    m = measure(h, y, weight=w, bias=b)
    d = m.to_dict()
    assert list(d) == NCMetrics.field_names()
    assert all(v is None or isinstance(v, (int, float)) for v in d.values())
    assert nc1_unnormalized(m) == pytest.approx(5 * m.nc1, rel=1e-15)
    assert self_duality_unsquared(m) == pytest.approx(math.sqrt(m.self_duality), rel=1e-15)


def test_near_ties_are_decided_like_float64(monkeypatch):
    """Float32 inputs whose classifier margins are within rounding still match the reference
    (rows within rounding of a tie are redone in float64; without that they would not)."""
    rng = np.random.default_rng(1)
    c, d, n = 4, 12, 600
    w = rng.standard_normal((c, d))
    h = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    y[:c] = np.arange(c)
    w[1] = w[0] + 1e-7 * rng.standard_normal(d)  # classes 0 and 1 tie to ~1e-7 relative
    ref = reference_metrics(h, y, w, None)
    got = measure(h, y, weight=w).to_dict()
    assert got["accuracy"] == ref["accuracy"] and got["ncc_mismatch"] == ref["ncc_mismatch"]
    monkeypatch.setattr(NCAccumulator, "_tol", lambda self, depth: 0.0)
    unchecked = measure(h, y, weight=w).to_dict()
    assert (unchecked["accuracy"], unchecked["ncc_mismatch"]) != (ref["accuracy"],
                                                                  ref["ncc_mismatch"])


# ----------------------------------------------------------------------------- exact zeros


@pytest.mark.parametrize("offset", [0.0, 1e3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exact_zeros_on_collapsed_features(offset, dtype):
    c, d, per = 7, 12, 30
    means = simplex_etf(c, d, seed=2, scale=3.0)
    y = np.repeat(np.arange(c), per)
    h = torch.from_numpy(means[y] + offset).to(dtype)
    shift = np.full(d, offset)
    weight = means
    bias = -(weight @ shift)  # W mu_G + b = 0 with mu_G = offset
    m = measure(h, y, weight=weight, bias=bias)
    # identical samples per class: the within-class metrics are exactly zero in any dtype
    assert m.nc1 == 0.0 and m.nc1_trace_ratio == 0.0 and m.cdnv == 0.0
    assert m.ncc_mismatch == 0.0 and m.accuracy == 1.0
    # geometry: float64 to ~1e-12; float32 only up to the rounding of the inputs themselves
    eps = 1e-12 if dtype == torch.float64 else 64 * 2.0**-24 * (offset + 3.0) / 3.0
    for key in ("equinorm_means", "equinorm_weights", "equiangular_means",
                "equiangular_weights", "maxangle_means", "maxangle_weights", "etf_error_means",
                "etf_error_weights", "self_duality", "self_duality_etf_error"):
        assert abs(getattr(m, key)) <= eps, (key, getattr(m, key))
    assert abs(m.bias_collapse) <= eps * 3.0 * max(1.0, offset) * 10


def test_exact_zero_nc1_float64_is_exactly_zero():
    means = simplex_etf(5, 8, seed=1)
    y = np.repeat(np.arange(5), 4)
    m = measure(means[y], y)
    assert m.nc1 == 0.0 and m.cdnv == 0.0 and m.nc1_trace_ratio == 0.0


# ----------------------------------------------------------------------------- bad input


def _data():
    h, y, w, b = synthetic(60, 6, 3, 0.5)
    return torch.from_numpy(h), torch.from_numpy(y), w, b


def test_nan_and_inf_features_are_reported():
    h, y, _, _ = _data()
    h[17, 2] = float("nan")
    h[40, 0] = float("inf")
    h[41, 1] = float("nan")
    with pytest.raises(ValueError, match=r"3 non-finite value\(s\) \(2 NaN, 1 Inf\); "
                                         r"first at row 17"):
        measure(h, y)


def test_nan_in_first_sample_of_a_class():
    h, y, _, _ = _data()
    first = int((y == 2).nonzero()[0, 0])
    h[first, 3] = float("nan")
    with pytest.raises(ValueError, match=rf"1 non-finite value\(s\) \(1 NaN, 0 Inf\); "
                                         rf"first at row {first}\."):
        measure(h, y)


def test_labels_out_of_range_and_not_integral():
    h, y, w, _ = _data()
    bad = y.clone()
    bad[5] = 3
    with pytest.raises(ValueError, match=r"labels out of range: 1 label\(s\) outside \[0, 3\), "
                                         r"first at index 5 \(value 3\)"):
        measure(h, bad, weight=w)
    neg = y.clone()
    neg[9] = -1
    with pytest.raises(ValueError, match=r"first at index 9 \(value -1\)"):
        measure(h, neg)
    frac = y.double()
    frac[4] = 1.5
    with pytest.raises(ValueError, match=r"labels must be integral: 1 label\(s\) are not whole"):
        measure(h, frac)
    with pytest.raises(TypeError, match="labels must be integers"):
        measure(h, y > 0)
    m = measure(h, y.double())  # whole-number floats are accepted
    assert m.num_classes == 3


def test_shape_errors():
    h, y, w, b = _data()
    with pytest.raises(ValueError, match=r"length mismatch: 60 feature rows but 59 labels"):
        measure(h, y[:59])
    with pytest.raises(ValueError, match=r"features must be 2-D with shape \(N, d\)"):
        measure(h[:, 0], y)
    with pytest.raises(ValueError, match=r"labels must be 1-D"):
        measure(h, y[:, None])
    with pytest.raises(TypeError, match=r"features must have a floating-point dtype"):
        measure(h.long(), y)
    with pytest.raises(TypeError, match=r"features must be a torch tensor or a numpy array"):
        measure("features", y)
    with pytest.raises(ValueError, match=r"weight has shape \(3, 5\), expected \(\*, 6\)"):
        measure(h, y, weight=w[:, :5])
    with pytest.raises(ValueError, match=r"inconsistent number of classes: weight.shape\[0\] = "
                                         r"3 but bias.shape\[0\] = 2"):
        measure(h, y, weight=w, bias=b[:2])
    with pytest.raises(ValueError, match=r"num_classes = 3 but logits.shape\[1\] = 4"):
        measure(h, y, num_classes=3, logits=torch.zeros(60, 4))
    with pytest.raises(ValueError, match=r"logits has shape \(59, 3\), expected \(60, 3\)"):
        measure(h, y, logits=torch.zeros(59, 3))
    with pytest.raises(ValueError, match=r"ncc_means has shape \(3, 2\), expected \(\*, 6\)"):
        measure(h, y, ncc_means=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="bias given without weight"):
        measure(h, y, bias=b)
    with pytest.raises(ValueError, match="inconsistent number of classes: num_classes = 4"):
        measure(h, y, weight=w, num_classes=4)


def test_nonfinite_weight_and_logits():
    h, y, w, _ = _data()
    w = w.copy()
    w[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"weight contains 1 non-finite value\(s\)"):
        measure(h, y, weight=w)
    lg = torch.zeros(60, 3)
    lg[7, 0] = float("inf")
    with pytest.raises(ValueError, match=r"logits contains 1 non-finite value\(s\) "
                                         r"\(0 NaN, 1 Inf\); first at row 7"):
        measure(h, y, logits=lg)


def test_fewer_than_two_classes():
    h, y, _, _ = _data()
    with pytest.raises(ValueError, match=r"need samples from at least 2 classes, got 1"):
        measure(h, torch.zeros_like(y), num_classes=3)


def test_absent_class_warning_and_restriction():
    h, y, w, b = synthetic(300, 8, 4, 0.5, seed=9)
    w5 = np.vstack([w, np.ones((1, 8))])
    b5 = np.append(b, 0.0)
    with pytest.warns(UserWarning, match=r"1 of 5 classes have no samples"):
        m = measure(h, y, weight=w5, bias=b5)
    ref = reference_metrics(h, y, w5, b5)
    assert_matches(m.to_dict(), ref, 1e-9)
    assert m.num_classes == 4
    m4 = measure(h, y, weight=w, bias=b)
    for key in ("nc1", "equinorm_weights", "equiangular_weights", "self_duality",
                "etf_error_weights"):
        assert getattr(m, key) == pytest.approx(getattr(m4, key), rel=1e-12)


def test_low_dimension_warning():
    h, y, w, b = synthetic(400, 3, 8, 0.3, seed=11)
    with pytest.warns(UserWarning, match=r"feature dimension d = 3 is smaller than C - 1 = 7"):
        m = measure(h, y, weight=w, bias=b)
    assert_matches(m.to_dict(), reference_metrics(h, y, w, b), 1e-9)


def test_no_warnings_on_clean_input():
    h, y, w, b = synthetic(300, 8, 4, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measure(h, y, weight=w, bias=b)


def test_numpy_and_torch_inputs_agree():
    h, y, w, b = synthetic(300, 8, 4, 0.5)
    a = measure(h, y, weight=w, bias=b).to_dict()
    t = measure(torch.from_numpy(h), torch.from_numpy(y), weight=torch.from_numpy(w),
                bias=torch.from_numpy(b)).to_dict()
    assert a == t


# ----------------------------------------------------------------------------- benchmark


@pytest.mark.filterwarnings("ignore:feature dimension d = 64 is smaller")
def test_benchmark_quick_runs(capsys):
    """The benchmark script runs end to end (sizes reduced; timings are not checked)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "measure.py"
    spec = importlib.util.spec_from_file_location("ncollapse_benchmark_measure", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        rows = bench.run(quick=True, repeats=1, sigma=0.3, threads=1, skip_naive=False)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert [r["workload"] for r in rows] == ["W1", "W2", "W3"]
    assert re.search(r"W1 .* naive/ncollapse .* ncollapse/matmul .* GB above inputs", out)
    for r in rows[:2]:
        h, y, w, b = bench.make_data(r["N"], r["d"], r["C"], 0.3)
        assert bench.naive(h, y, w, b, r["C"])["nc1"] == pytest.approx(r["nc1"], rel=1e-5)
    h, y, w, _ = bench.make_zipf_data(rows[2]["N"], rows[2]["d"], rows[2]["C"], 0.3)
    counts = torch.bincount(y, minlength=rows[2]["C"])
    assert counts.min() >= 1 and counts.max() > 20 * counts.median()  # Zipf, every class
    assert rows[2]["nc1"] == pytest.approx(measure(h, y, weight=w).nc1, rel=1e-6)  # float32
    assert 0 <= rows[2]["peak_bytes"] < 2**30


@pytest.mark.filterwarnings("ignore:feature dimension d")
def test_limits_benchmark_quick_runs(capsys, monkeypatch):
    """benchmarks/limits.py runs end to end at 1/64 of its sizes."""
    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench_dir))
    spec = importlib.util.spec_from_file_location("ncollapse_benchmark_limits",
                                                  bench_dir / "limits.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        rows = bench.main(["--quick", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert [r["case"] for r in rows] == ["wide", "deep"]
    assert rows[0]["C"] == 2048 and rows[1]["d"] == 128
    out = capsys.readouterr().out
    assert re.search(r"wide: N=4096 d=8 C=2048 .* x one float64 C x d matrix", out)


def test_equiangular_ordered_pairs_matches_direct_computation():
    h, y, w, b = synthetic(500, 12, 6, 0.5, seed=13)
    m = measure(h, y, weight=w, bias=b)
    means = np.stack([h[y == c].mean(0) for c in range(6)]) - h.mean(0)
    got = equiangular_ordered_pairs(m)
    for x, value in zip((means, w), got, strict=True):
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        cos = xn @ xn.T
        ordered = cos[~np.eye(6, dtype=bool)]  # c != c', each pair twice
        assert value == pytest.approx(ordered.std(ddof=1), rel=1e-9)


def test_accuracy_float32_high_dimension():
    """d = 1024, C = 100 in float32 (long dot products, many classes), imbalanced, offset."""
    h, y, w, b = synthetic(4000, 1024, 100, 1e-3, imbalanced=True, offset=1e3, seed=2,
                           dtype=np.float32)
    assert_matches(measure(h, y, weight=w, bias=b).to_dict(), reference_metrics(h, y, w, b),
                   1e-6)


@pytest.mark.parametrize("sigma", [1.0, 1.7e-5])
def test_accuracy_float32_several_bulk_chunks(sigma):
    """Few classes in float32 over several large chunks, each of several float32 slots."""
    from ncollapse.metrics.kernels import bulk_rows, chunk_rows

    n, d = 3500, 512
    step = chunk_rows(d)
    big = bulk_rows(d, step, n)
    assert step < big < n and n % big  # several slots per chunk, several chunks, a partial one
    h, y, w, b = synthetic(n, d, 6, sigma, imbalanced=True, offset=1e3, seed=4,
                           dtype=np.float32)
    assert_matches(measure(h, y, weight=w, bias=b).to_dict(), reference_metrics(h, y, w, b),
                   1e-6)
