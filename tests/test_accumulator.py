"""NCAccumulator: streaming, merging, one-pass metrics, full covariance, persistence, misuse."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ncollapse import NCAccumulator, measure

sys.path.insert(0, str(Path(__file__).parent))
from reference import reference_metrics, synthetic  # noqa: E402
from test_metrics import assert_matches  # noqa: E402

MEAN_ONLY = ("nc1_trace_ratio", "cdnv", "equinorm_means", "equinorm_weights",
             "equiangular_means", "equiangular_weights", "maxangle_means", "maxangle_weights",
             "etf_error_means", "etf_error_weights", "self_duality", "self_duality_etf_error",
             "accuracy", "bias_collapse", "num_classes", "num_samples", "dim")


def batches(h, y, sizes, logits=None):
    i = 0
    for s in sizes:
        yield h[i:i + s], y[i:i + s], None if logits is None else logits[i:i + s]
        i += s
    assert i == len(y)


def two_pass(acc: NCAccumulator, h, y, sizes, logits=None):
    for f, lab, lg in batches(h, y, sizes, logits):
        acc.update(f, lab, lg)
    acc.begin_second_pass()
    for f, lab, lg in batches(h, y, sizes, logits):
        acc.update(f, lab, lg)
    return acc.compute()


@pytest.fixture(params=[(np.float64, 1e-9), (np.float32, 1e-6)], ids=["f64", "f32"])
def data(request):
    dtype, rtol = request.param
    h, y, w, b = synthetic(700, 16, 6, 1e-3, imbalanced=True, offset=1e3, seed=21,
                           dtype=dtype)
    return torch.from_numpy(h), torch.from_numpy(y), w, b, rtol


def test_streaming_matches_one_shot_and_reference(data):
    h, y, w, b, rtol = data
    ref = reference_metrics(h, y, w, b)
    acc = NCAccumulator(num_classes=6, weight=w, bias=b)
    m = two_pass(acc, h, y, [1, 99, 250, 350])
    assert_matches(m.to_dict(), ref, rtol)
    assert_matches(m.to_dict(), measure(h, y, weight=w, bias=b).to_dict(), rtol)


def test_first_pass_gives_mean_metrics(data):
    h, y, w, b, rtol = data
    ref = reference_metrics(h, y, w, b)
    acc = NCAccumulator(weight=w, bias=b)  # num_classes from the weight
    for f, lab, _ in batches(h, y, [300, 400]):
        acc.update(f, lab)
    m = acc.compute()
    assert m.nc1 is None and m.ncc_mismatch is None
    assert_matches(m.to_dict(), ref, rtol, keys=MEAN_ONLY)


def test_full_covariance_gives_nc1_in_one_pass(data):
    h, y, w, b, rtol = data
    ref = reference_metrics(h, y, w, b)
    acc = NCAccumulator(num_classes=6, weight=w, bias=b, full_covariance=True)
    for f, lab, _ in batches(h, y, [123, 77, 500]):
        acc.update(f, lab)
    one = acc.compute()
    assert_matches(one.to_dict(), ref, rtol, keys=MEAN_ONLY + ("nc1",))
    acc.begin_second_pass()
    for f, lab, _ in batches(h, y, [700]):
        acc.update(f, lab)
    assert acc.compute().nc1 == pytest.approx(one.nc1, rel=rtol)


def test_merge_shards_in_both_passes(data):
    """Shards accumulate separately; pass-1 states merge, pass-2 states merge: same result."""
    h, y, w, b, rtol = data
    cuts = [0, 50, 400, 700]
    shards = [(h[a:z], y[a:z]) for a, z in zip(cuts[:-1], cuts[1:], strict=True)]
    accs = [NCAccumulator(num_classes=6, weight=w, bias=b) for _ in shards]
    for acc, (f, lab) in zip(accs, shards, strict=True):
        acc.update(f, lab)
    total = NCAccumulator(num_classes=6, weight=w, bias=b)
    for acc in accs:
        total.merge(acc)
    merged_pass1 = total.state_dict()
    assert_matches(total.compute().to_dict(), reference_metrics(h, y, w, b), rtol,
                   keys=MEAN_ONLY)
    # pass 2: every shard starts from the merged pass-1 state
    for acc, (f, lab) in zip(accs, shards, strict=True):
        acc.load_state_dict(merged_pass1)
        acc.begin_second_pass()
        acc.update(f, lab)
    first = accs[0]
    for acc in accs[1:]:
        first.merge(acc)
    assert_matches(first.compute().to_dict(), reference_metrics(h, y, w, b), rtol)


def test_merge_with_disjoint_classes_and_empty():
    h, y, w, b = synthetic(400, 10, 4, 0.2, offset=30.0, seed=2)
    lo, hi = y < 2, y >= 2
    a, c = NCAccumulator(num_classes=4), NCAccumulator(num_classes=4)
    a.update(h[lo], y[lo])
    c.update(h[hi], y[hi])
    empty = NCAccumulator(num_classes=4)
    a.merge(empty)
    empty.merge(c)  # an empty accumulator adopts the other's state
    a.merge(empty)
    a.begin_second_pass()
    a.update(h, y)
    assert_matches(a.compute().to_dict(), reference_metrics(h, y), 1e-9)


def test_logits_in_updates():
    h, y, w, b = synthetic(500, 12, 5, 0.7, seed=4)
    logits = h @ w.T + b
    logits[::7] = -logits[::7]  # a classifier that is not argmax(W h + b)
    ref = reference_metrics(h, y, w, b, logits=logits)
    acc = NCAccumulator(num_classes=5, weight=w, bias=b)
    m = two_pass(acc, h, y, [200, 300], logits=logits)
    assert_matches(m.to_dict(), ref, 1e-9)


def test_ncc_means_streaming():
    h, y, w, b = synthetic(500, 12, 5, 0.7, seed=6)
    centres = np.random.default_rng(3).standard_normal((5, 12))
    ref = reference_metrics(h, y, w, b, ncc_means=centres)
    acc = NCAccumulator(num_classes=5, weight=w, bias=b, ncc_means=centres)
    assert_matches(two_pass(acc, h, y, [250, 250]).to_dict(), ref, 1e-9)


@pytest.mark.parametrize("phase", [1, 2])
def test_state_dict_round_trip(phase, data):
    h, y, w, b, rtol = data
    acc = NCAccumulator(num_classes=6, weight=w, bias=b, full_covariance=True)
    acc.update(h[:300], y[:300])
    if phase == 2:
        acc.update(h[300:], y[300:])
        acc.begin_second_pass()
        acc.update(h[:200], y[:200])
    buf = io.BytesIO()
    torch.save(acc.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = NCAccumulator(num_classes=6, weight=w, bias=b, full_covariance=True)
    fresh.load_state_dict(state)
    for a in (acc, fresh):
        if phase == 1:
            a.update(h[300:], y[300:])
        else:
            a.update(h[200:], y[200:])
    assert fresh.compute().to_dict() == acc.compute().to_dict()


def test_reset_forgets_everything():
    h, y, w, b = synthetic(300, 8, 3, 0.5)
    acc = NCAccumulator(num_classes=3, weight=w, bias=b)
    acc.update(h[:100] * 5.0, y[:100])
    acc.reset()
    assert_matches(two_pass(acc, h, y, [300]).to_dict(), reference_metrics(h, y, w, b), 1e-9)


def test_sync_without_process_group_is_a_no_op():
    h, y, _, _ = synthetic(200, 6, 3, 0.5)
    acc = NCAccumulator(num_classes=3)
    acc.update(h, y)
    before = acc.compute().to_dict()
    acc.sync()
    acc.sync()
    assert acc.compute().to_dict() == before


def test_misuse_raises_clear_errors():
    h, y, w, b = synthetic(200, 6, 3, 0.5)
    acc = NCAccumulator(num_classes=3)
    with pytest.raises(RuntimeError, match=r"begin_second_pass\(\) before any data"):
        acc.begin_second_pass()
    with pytest.raises(RuntimeError, match=r"compute\(\) before any data"):
        acc.compute()
    acc.update(h, y)
    acc.begin_second_pass()
    with pytest.raises(RuntimeError, match=r"begin_second_pass\(\) was already called"):
        acc.begin_second_pass()
    acc.update(h[:150], y[:150])
    with pytest.raises(ValueError, match=r"pass 2 saw 150 samples .* both passes must see the "
                                         r"same data"):
        acc.compute()
    other = NCAccumulator(num_classes=3)
    other.update(h, y)
    with pytest.raises(RuntimeError, match=r"cannot merge an accumulator in pass 1 into one in "
                                           r"pass 2"):
        acc.merge(other)
    with pytest.raises(ValueError, match=r"features have dimension 5 but earlier batches had 6"):
        other.update(h[:, :5], y)
    wide = NCAccumulator(num_classes=4)
    wide.update(h, y)
    with pytest.raises(ValueError, match=r"different shapes: \(C, d\) = \(4, 6\) vs \(3, 6\)"):
        wide.merge(other)
    with pytest.raises(ValueError, match="cannot tell the number of classes"):
        NCAccumulator().update(h, y)


def test_pass_two_rejects_new_class_and_failed_update_poisons():
    h, y, _, _ = synthetic(200, 6, 3, 0.5)
    acc = NCAccumulator(num_classes=4)
    acc.update(h, y)
    acc.begin_second_pass()
    bad = y.copy()
    bad[3] = 3
    with pytest.raises(ValueError, match=r"pass 2 got label 3 \(index 3\), a class that had no "
                                         r"samples in pass 1"):
        acc.update(h, bad)
    acc2 = NCAccumulator(num_classes=3)
    acc2.update(h[:100], y[:100])
    hb = h.copy()
    hb[150, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) \(1 NaN, 0 Inf\); first at "
                                         r"row 50"):
        acc2.update(hb[100:], y[100:])
    with pytest.raises(RuntimeError, match=r"call reset\(\)"):
        acc2.compute()


# ----------------------------------------------------------------------------- bug fixes


def test_merge_rejects_other_objects_with_type_error():
    acc = NCAccumulator(num_classes=3)
    for bad in (object(), None, {"counts": 1}):
        with pytest.raises(TypeError, match=r"merge\(\) takes an NCAccumulator, got"):
            acc.merge(bad)


def test_pass_two_update_after_compute_is_refused():
    """A pass-2 update() after compute() would count samples twice (under DDP the state
    already holds every rank's data): it is an error, not a later count mismatch."""
    h, y, w, b = synthetic(300, 8, 3, 0.5)
    acc = NCAccumulator(num_classes=3, weight=w, bias=b)
    acc.update(h, y)
    acc.begin_second_pass()
    acc.update(h, y)
    first = acc.compute().to_dict()
    with pytest.raises(RuntimeError, match=r"update\(\) after compute\(\) or sync\(\) in pass 2"):
        acc.update(h[:10], y[:10])
    assert acc.compute().to_dict() == first  # the refused batch left no trace
    synced = NCAccumulator(num_classes=3)
    synced.update(h, y)
    synced.begin_second_pass()
    synced.update(h, y)
    synced.sync()
    with pytest.raises(RuntimeError, match=r"pass 2 is closed"):
        synced.update(h, y)


def test_pass_one_update_after_compute_keeps_streaming():
    h, y, _, _ = synthetic(300, 8, 3, 0.5)
    acc = NCAccumulator(num_classes=3)
    acc.update(h[:100], y[:100])
    acc.compute()
    acc.update(h[100:], y[100:])
    assert acc.compute().num_samples == 300


def test_load_state_dict_refuses_another_classifier():
    h, y, w, b = synthetic(300, 8, 3, 0.5)
    acc = NCAccumulator(num_classes=3, weight=w, bias=b)
    acc.update(h, y)
    state = acc.state_dict()
    other = w.copy()
    other[1, 2] += 1e-3
    with pytest.raises(ValueError, match=r"state was saved with a different weight .* same "
                                         r"weight, bias and ncc_means"):
        NCAccumulator(num_classes=3, weight=other, bias=b).load_state_dict(state)
    with pytest.raises(ValueError, match=r"different weight \(shape 3x8"):
        NCAccumulator(num_classes=4, weight=np.vstack([w, w[:1]])).load_state_dict(state)
    with pytest.raises(ValueError, match=r"different bias"):
        NCAccumulator(num_classes=3, weight=w).load_state_dict(state)
    with pytest.raises(ValueError, match=r"different weight \(shape 3x8.* \(none\)"):
        NCAccumulator(num_classes=3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"cannot merge an accumulator made with a different "
                                         r"weight"):
        NCAccumulator(num_classes=3, weight=other, bias=b).merge(acc)
    same = NCAccumulator(num_classes=3, weight=torch.from_numpy(w), bias=b)  # any array type
    same.load_state_dict(state)
    assert same.compute().to_dict() == acc.compute().to_dict()


def test_load_state_dict_checks_saved_tensors():
    h, y, _, _ = synthetic(300, 8, 3, 0.5)
    acc = NCAccumulator(num_classes=3)
    acc.update(h, y)
    state = acc.state_dict()
    state["state"]["sums"] = state["state"]["sums"][:, :5]
    with pytest.raises(ValueError, match=r"saved state tensor 'sums' has shape \(3, 5\), "
                                         r"expected \(3, 8\)"):
        NCAccumulator(num_classes=3).load_state_dict(state)
    with pytest.raises(ValueError, match=r"saved with options"):
        NCAccumulator(num_classes=3, full_covariance=True).load_state_dict(acc.state_dict())


def test_state_is_declared_once():
    """reset, state_dict and merge cover exactly the tensors of the declared table."""
    from ncollapse.metrics import state as S

    h, y, w, b = synthetic(300, 8, 3, 0.5)
    acc = NCAccumulator(num_classes=3, weight=w, bias=b, full_covariance=True)
    acc.update(h, y)
    names = {s.name for s in S.enabled(S.PASS1, acc._options)}
    assert set(acc.state_dict()["state"]) == names
    acc.begin_second_pass()
    assert set(acc.state_dict()["pass2"]) == {s.name for s in acc._specs2}
    assert {s.name for s in acc._specs2} <= {s.name for s in S.PASS2}


# ----------------------------------------------------------------------------- OOD features


def test_update_ood_matches_one_shot_and_reference():
    h, y, w, b = synthetic(600, 10, 4, 0.4, seed=8, offset=20.0)
    ood = np.random.default_rng(5).standard_normal((150, 10)) + 20.5
    ref = reference_metrics(h, y, w, b, ood_features=ood)
    one = measure(h, y, weight=w, bias=b, ood_features=ood).to_dict()
    assert_matches(one, ref, 1e-9)
    parts = [NCAccumulator(num_classes=4, weight=w, bias=b) for _ in range(2)]
    parts[0].update(h[:200], y[:200])
    parts[0].update_ood(ood[:40])
    parts[1].update(h[200:], y[200:])
    parts[1].update_ood(ood[40:])
    parts[0].merge(parts[1])
    parts[0].begin_second_pass()
    parts[0].update(h, y)
    assert_matches(parts[0].compute().to_dict(), ref, 1e-9)
    with pytest.raises(RuntimeError, match=r"update_ood\(\) in pass 2"):
        parts[0].update_ood(ood)


def test_state_loads_into_an_accumulator_without_arguments():
    h, y, _, _ = synthetic(300, 8, 3, 0.5)
    acc = NCAccumulator(num_classes=3)
    acc.update(h, y)
    bare = NCAccumulator()
    bare.load_state_dict(acc.state_dict())
    other = NCAccumulator()
    other.merge(acc)
    assert bare.compute().to_dict() == other.compute().to_dict() == acc.compute().to_dict()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("second_pass", [False, True])
def test_class_means_match_float64_means_in_either_pass(dtype, second_pass):
    """``class_means()``: the per-class float64 means of the data fed (NaN for a class with no
    sample) and the count-weighted global mean, whatever the batching and the pass, with a
    large common offset; merged accumulators give the same."""
    h, y, _, _ = synthetic(400, 12, 7, 0.3, offset=1e3, imbalanced=True, seed=3)
    h = h.astype(dtype)
    y = np.where(y == 4, 5, y)  # class 4 has no sample
    h64 = h.astype(np.float64)
    want = np.stack([h64[y == k].mean(0) if (y == k).any() else np.full(12, np.nan)
                     for k in range(7)])
    acc = NCAccumulator(num_classes=7, second_pass=second_pass)
    other = NCAccumulator(num_classes=7, second_pass=second_pass)
    for a, b in ((0, 150), (150, 230), (230, 400)):
        (acc if a < 230 else other).update(h[a:b], y[a:b])
    acc.merge(other)
    for phase in (1, 2):
        means, g = acc.class_means()
        got = means.numpy()
        assert np.array_equal(np.isnan(got).all(1), [False] * 4 + [True] + [False] * 2)
        scale = 1e3 * (1e-7 if dtype == np.float32 else 1e-13)  # of the 1e3 offset
        np.testing.assert_allclose(got[~np.isnan(got[:, 0])], want[[0, 1, 2, 3, 5, 6]],
                                   rtol=0, atol=scale)
        np.testing.assert_allclose(g.numpy(), h64.mean(0), rtol=0, atol=scale)
        if phase == 1:  # the same in pass 2
            acc.begin_second_pass()
            for a, b in ((0, 230), (230, 400)):
                acc.update(h[a:b], y[a:b])
    assert acc.phase == 2


def test_class_means_before_any_data_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before any data"):
        NCAccumulator(num_classes=3).class_means()
