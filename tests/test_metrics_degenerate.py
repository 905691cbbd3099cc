"""Degenerate geometry is a result (nan/inf with one warning saying why); implausible class
counts are refused before anything is allocated, with the memory they would need."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ncollapse import NCAccumulator, measure
from ncollapse import validation as V
from ncollapse.cli import main as cli_main


def _measure_recording(*args, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = measure(*args, **kw)
    return m, [str(w.message) for w in caught]


@pytest.mark.parametrize("value", [0.0, 1.0, -3.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coinciding_means_give_nan_with_one_warning(value, dtype):
    """Constant features (dead ReLUs: 0): NC1, CDNV, NC2 of the means undefined, one warning."""
    h = np.full((20, 4), value, dtype)
    m, texts = _measure_recording(h, np.repeat([0, 1], 10))
    assert math.isnan(m.nc1) and math.isnan(m.cdnv) and math.isnan(m.equinorm_means)
    assert m.hyperspherical_energy_means == math.inf
    assert len(texts) == 1, texts
    assert "class means coincide" in texts[0] and "NC1" in texts[0]
    assert "overflow" not in texts[0]


def test_distinct_means_give_no_degeneracy_warning():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    h = rng.standard_normal((3, 5))[y] + 0.1 * rng.standard_normal((30, 5))
    m, texts = _measure_recording(h, y, weight=rng.standard_normal((3, 5)))
    assert texts == [] and math.isfinite(m.nc1) and math.isfinite(m.self_duality)


def test_zero_classifier_weights_give_nan_self_duality_with_a_warning():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 10)
    h = rng.standard_normal((3, 5))[y] + 0.1 * rng.standard_normal((30, 5))
    m, texts = _measure_recording(h, y, weight=np.zeros((3, 5)))
    assert math.isnan(m.self_duality) and math.isnan(m.uniform_duality)
    assert math.isfinite(m.nc1)
    assert len(texts) == 1 and "classifier weights are all zero" in texts[0], texts
    assert "self_duality" in texts[0]


def test_nonfinite_intermediate_from_small_values_is_not_called_overflow():
    """Only values whose squares overflow are reported as an overflow."""
    with pytest.raises(RuntimeError, match="too small to overflow") as info:
        V.report_nonfinite(torch.zeros(5, 3), "features")
    assert "overflow:" not in str(info.value)
    with pytest.raises(ValueError, match="features overflow"):
        V.report_nonfinite(torch.full((5, 3), 1e30), "features")


_D = 64  # 10**9 classes x 64 dims: terabytes of tables on any machine


def test_huge_num_classes_in_measure_is_refused_with_the_memory_needed():
    h = np.random.default_rng(0).standard_normal((20, _D)).astype(np.float32)
    with pytest.raises(ValueError, match=r"C = 1,000,000,000 classes .* need about [\d,.]+ GB"):
        measure(h, np.repeat([0, 1], 10), num_classes=10**9)


def test_label_ids_beyond_2_pow_40_are_refused_with_the_fix():
    h = np.random.default_rng(0).standard_normal((20, _D)).astype(np.float32)
    with pytest.raises(ValueError, match=r"return_inverse") as info:
        measure(h, np.repeat([0, 2**40], 10))
    assert "GB" in str(info.value) and "\n" not in str(info.value)


def test_accumulator_refuses_huge_num_classes_before_allocating():
    acc = NCAccumulator(num_classes=10**9)
    with pytest.raises(ValueError, match="per-class"):
        acc.update(torch.zeros(4, _D), torch.tensor([0, 1, 0, 1]))


def test_class_count_check_uses_the_available_memory(monkeypatch):
    need = V.class_table_bytes(1000, 10, torch.float32)
    monkeypatch.setattr(V, "available_memory", lambda device="cpu": need - 1)
    with pytest.raises(ValueError, match="C = 1,000 classes with d = 10"):
        V.check_class_count(1000, 10, torch.float32)
    monkeypatch.setattr(V, "available_memory", lambda device="cpu": need)
    V.check_class_count(1000, 10, torch.float32)
    assert V.available_memory() is None or V.available_memory() > 0


def test_cli_measure_huge_num_classes_is_one_line(tmp_path: Path, capsys):
    f = tmp_path / "f.npz"
    np.savez(f, features=np.ones((20, _D), np.float32), labels=np.repeat([0, 1], 10))
    assert cli_main(["measure", str(f), "--num-classes", str(10**9)]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "GB" in err and "Traceback" not in err
