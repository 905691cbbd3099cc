"""Tests of ncollapse.losses against hand-written float64 numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncollapse.losses import LOSSES, build_loss


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def np_loss(name: str, z: np.ndarray, y: np.ndarray, *, eps=0.1, k=1.0, gamma=2.0) -> np.ndarray:
    """Per-sample losses, written from the formulas in the losses module docstring."""
    n, c = z.shape
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0
    logp = np_log_softmax(z)
    if name == "ce":
        return -logp[np.arange(n), y]
    if name == "mse":
        return 0.5 * ((z - k * onehot) ** 2).sum(axis=1)
    if name == "label-smoothing":
        q = (1 - eps) * onehot + eps / c
        return -(q * logp).sum(axis=1)
    p_t = np.exp(logp[np.arange(n), y])
    return -((1 - p_t) ** gamma) * np.log(p_t)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(17, 6))
    y = rng.integers(0, 6, size=17)
    return z, y


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("params", [dict(), dict(eps=0.3, k=5.0, gamma=0.5), dict(gamma=0.0)])
def test_matches_numpy_formula(batch, name, params):
    z, y = batch
    kw = dict(label_smoothing=params.get("eps", 0.1), mse_scale=params.get("k", 1.0),
              focal_gamma=params.get("gamma", 2.0))
    expect = np_loss(name, z, y, **params)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    for reduction, ref in (("mean", expect.mean()), ("sum", expect.sum()), ("none", expect)):
        loss = build_loss(name, num_classes=6, reduction=reduction, **kw)
        np.testing.assert_allclose(loss(zt, yt).numpy(), ref, rtol=1e-12, atol=1e-14)
    # float32 inputs give the same value to float32 precision
    loss = build_loss(name, num_classes=6, **kw)
    out32 = loss(zt.float(), yt)
    assert out32.dtype == torch.float32 and out32.ndim == 0
    np.testing.assert_allclose(out32.item(), expect.mean(), rtol=1e-5)


def test_relations_to_torch_losses(batch):
    z, y = batch
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    c = 6
    ce = build_loss("ce", num_classes=c)(zt, yt)
    assert torch.allclose(ce, F.cross_entropy(zt, yt), rtol=1e-14)
    focal0 = build_loss("focal", num_classes=c, focal_gamma=0.0)(zt, yt)
    assert torch.allclose(focal0, ce, rtol=1e-14)
    ls0 = build_loss("label-smoothing", num_classes=c, label_smoothing=0.0)(zt, yt)
    assert torch.allclose(ls0, ce, rtol=1e-14)
    # summed over classes: ½·C times torch's class-averaged MSELoss
    k = 2.0
    mse = build_loss("mse", num_classes=c, mse_scale=k)(zt, yt)
    ref = torch.nn.MSELoss()(zt, k * F.one_hot(yt, c).double())
    assert torch.allclose(mse, 0.5 * c * ref, rtol=1e-14)


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck(batch, name):
    z, y = batch
    zt = torch.from_numpy(z[:5]).requires_grad_(True)
    loss = build_loss(name, num_classes=6, focal_gamma=1.5)
    assert torch.autograd.gradcheck(lambda t: loss(t, torch.from_numpy(y[:5])), (zt,))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradients_finite_for_extreme_logits(name, gamma):
    # confidently right (p_y = 1 in float32) and confidently wrong samples
    z = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0], [-1e4, 0.0, 1e4]],
                     requires_grad=True)
    y = torch.tensor([0, 1, 0])
    loss = build_loss(name, num_classes=3, focal_gamma=gamma)(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ce_and_focal_keep_digits_when_confident(dtype):
    # t = e^{a} + e^{b} rounds 1 + t to 1 (float32: a = −20; float64: a = −46), so a
    # log_softmax-based loss returns 0; the exact values are log1p(t) and q^γ·log1p(t),
    # q = 1 − p_y = t/(1 + t)
    a, b = (-20.0, -30.0) if dtype == torch.float32 else (-46.0, -60.0)
    z = torch.tensor([[0.0, a, b]], dtype=dtype)
    y = torch.tensor([0])
    assert F.cross_entropy(z, y).item() == 0.0
    t = np.exp(a) + np.exp(b)
    ce_exact = np.log1p(t)
    q = t / (1 + t)
    rtol = 1e-5 if dtype == torch.float32 else 1e-13
    ce = build_loss("ce", num_classes=3)(z, y)
    np.testing.assert_allclose(ce.item(), ce_exact, rtol=rtol)
    for gamma in (0.5, 1.0, 2.0):
        out = build_loss("focal", num_classes=3, focal_gamma=gamma)(z, y)
        np.testing.assert_allclose(out.item(), q**gamma * ce_exact, rtol=rtol)
    # and the gradient of CE is p − e_y with p_y − 1 = −q, not rounded to 0
    zg = z.clone().requires_grad_(True)
    build_loss("ce", num_classes=3)(zg, y).backward()
    expect = np.array([-q, np.exp(a) / (1 + t), np.exp(b) / (1 + t)])
    np.testing.assert_allclose(zg.grad[0].double().numpy(), expect, rtol=rtol)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="hinge"), "valid choices: ce, mse, label-smoothing, focal"),
    (dict(name="mse", mse_scale=0.0), "mse_scale"),
    (dict(name="focal", focal_gamma=-1.0), "focal_gamma"),
    (dict(name="label-smoothing", label_smoothing=1.5), "label_smoothing"),
    (dict(name="ce", reduction="max"), "reduction"),
    (dict(name="ce", num_classes=1), "num_classes"),
])
def test_bad_arguments(kwargs, match):
    kw = dict(num_classes=3) | kwargs
    with pytest.raises(ValueError, match=match):
        build_loss(kw.pop("name"), **kw)


@pytest.mark.parametrize("name", LOSSES)
def test_bad_inputs(name):
    loss = build_loss(name, num_classes=3)
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="targets"):
        loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="int64"):
        loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.float32))
