"""Per-class statistics (NCMetrics.per_class) against an independent float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ncollapse import NCAccumulator, measure
from ncollapse.collect import measure_model
from ncollapse.metrics.per_class import PerClassStats


def _imbalanced(seed: int = 0, dtype: torch.dtype = torch.float64):
    rng = np.random.default_rng(seed)
    counts = [40, 40, 25, 10, 5]
    c, d = len(counts), 8
    centres = rng.standard_normal((c, d)) * 3 + 5.0  # a common offset too
    y = np.repeat(np.arange(c), counts)
    h = centres[y] + rng.standard_normal((y.size, d)) * np.linspace(0.3, 1.5, c)[y, None]
    w = rng.standard_normal((c, d))
    b = rng.standard_normal(c)
    perm = rng.permutation(y.size)
    return (torch.tensor(h[perm], dtype=dtype), torch.tensor(y[perm]),
            torch.tensor(w, dtype=dtype), torch.tensor(b, dtype=dtype))


def _reference(h: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class quantities straight from the definitions (docs/metrics.md), float64."""
    h = h.astype(np.float64)
    c = int(y.max()) + 1
    n = np.bincount(y, minlength=c)
    mu = np.stack([h[y == k].mean(0) for k in range(c)])
    mu_g = h.mean(0)
    mt = mu - mu_g
    sigma_b = mt.T @ mt / c
    evals, evecs = np.linalg.eigh(sigma_b)
    top = evecs[:, -(c - 1):]  # Σ_B^† over the top C−1 eigenpairs
    pinv = top @ np.diag(1.0 / evals[-(c - 1):]) @ top.T
    r = h - mu[y]
    quad = np.einsum("ij,jk,ik->i", r, pinv, r)
    nc1_share = np.array([quad[y == k].sum() for k in range(c)]) / (len(y) * c)
    var = np.array([(r[y == k] ** 2).sum(1).mean() for k in range(c)])
    mean_norms = np.linalg.norm(mt, axis=1)
    w_norms = np.linalg.norm(w, axis=1)
    cos = (w * mt).sum(1) / (w_norms * mean_norms)
    unit = mt / mean_norms[:, None]
    dist2 = ((mu[:, None] - mu[None]) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cdnv = (var[:, None] + var[None, :]) / (2 * dist2)
    np.fill_diagonal(cdnv, np.nan)
    wu = w / w_norms[:, None]
    return {"counts": n, "mean_norms": mean_norms, "weight_norms": w_norms,
            "within_variance": var, "nc1_contribution": nc1_share, "weight_mean_cosine": cos,
            "cos_means": unit @ unit.T, "cos_weights": wu @ wu.T, "cdnv": cdnv}


def _check(pc: PerClassStats, ref: dict[str, np.ndarray], rtol: float) -> None:
    assert isinstance(pc, PerClassStats)
    assert torch.equal(pc.classes, torch.arange(len(ref["counts"])))
    np.testing.assert_array_equal(pc.counts.numpy(), ref["counts"])
    for key in ("mean_norms", "weight_norms", "within_variance", "nc1_contribution",
                "weight_mean_cosine"):
        value = getattr(pc, key)
        assert isinstance(value, torch.Tensor) and value.dtype == torch.float64, key
        np.testing.assert_allclose(value.numpy(), ref[key], rtol=rtol, err_msg=key)
    np.testing.assert_allclose(pc.cosine_matrix().numpy(), ref["cos_means"], rtol=rtol,
                               atol=rtol)
    np.testing.assert_allclose(pc.cosine_matrix("weights").numpy(), ref["cos_weights"],
                               rtol=rtol, atol=rtol)
    np.testing.assert_allclose(pc.cdnv_matrix().numpy(), ref["cdnv"], rtol=rtol)


def test_measure_per_class_matches_float64_reference() -> None:
    h, y, w, b = _imbalanced()
    m = measure(h, y, weight=w, bias=b, per_class=True)
    ref = _reference(h.numpy(), y.numpy(), w.numpy())
    _check(m.per_class, ref, rtol=1e-9)
    # the shares add up to NC1, the CDNV matrix's mean over pairs is the CDNV
    assert float(m.per_class.nc1_contribution.sum()) == pytest.approx(m.nc1, rel=1e-12)
    iu = np.triu_indices(5, 1)
    assert float(np.mean(ref["cdnv"][iu])) == pytest.approx(m.cdnv, rel=1e-9)
    # to_dict() stays scalars only
    d = m.to_dict()
    assert "per_class" not in d
    assert all(v is None or isinstance(v, (int, float)) for v in d.values())
    assert measure(h, y, weight=w, bias=b).per_class is None


def test_streamed_accumulator_gives_the_same_per_class_values() -> None:
    h, y, w, b = _imbalanced(seed=1)
    h32 = h.float()
    acc = NCAccumulator(num_classes=5, weight=w.float(), bias=b.float(), per_class=True)
    for i in range(0, len(y), 17):
        acc.update(h32[i:i + 17], y[i:i + 17])
    acc.begin_second_pass()
    for i in range(0, len(y), 17):
        acc.update(h32[i:i + 17], y[i:i + 17])
    # float32 features, float64 accumulation: the reference uses the same float32 values
    _check(acc.compute().per_class, _reference(h32.double().numpy(), y.numpy(),
                                               w.float().double().numpy()), rtol=1e-5)


def test_measure_model_per_class_and_the_matrix_size_limit() -> None:
    h, y, w, b = _imbalanced(seed=2)
    head = nn.Linear(8, 5).double()
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    model = nn.Sequential(nn.Identity(), head)
    loader = [(h[i:i + 32], y[i:i + 32]) for i in range(0, len(y), 32)]
    m = measure_model(model, loader, per_class=True)
    _check(m.per_class, _reference(h.numpy(), y.numpy(), w.numpy()), rtol=1e-9)
    with pytest.raises(ValueError, match="refused above max_classes=4.*larger max_classes"):
        m.per_class.cosine_matrix(max_classes=4)
    with pytest.raises(ValueError, match="refused above max_classes=3"):
        m.per_class.cdnv_matrix(max_classes=3)
    assert m.per_class.cdnv_matrix(max_classes=5).shape == (5, 5)
    arrays = m.per_class.as_numpy()
    assert isinstance(arrays["mean_norms"], np.ndarray) and arrays["mean_norms"].shape == (5,)
    # a layer without a classifier: no row norms or cosines, the rest is there
    layer = measure_model(model, loader, layers=["0"], classifier=False, num_classes=5,
                          per_class=True)["0"]
    assert layer.per_class.weight_norms is None and layer.per_class.weight_mean_cosine is None
    np.testing.assert_allclose(layer.per_class.mean_norms.numpy(),
                               m.per_class.mean_norms.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="needs a layer with a classifier"):
        layer.per_class.cosine_matrix("weights")
