"""Tests of ncollapse.models: shapes, the features/classifier contract, fixed ETF, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ncollapse.geometry import is_simplex_etf
from ncollapse.models import (
    MODELS,
    VGG_CONFIGS,
    build_model,
    count_parameters,
    fix_classifier_to_etf,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
SMALL = {"mlp": dict(width=16, depth=2), "vgg": dict(width=4), "resnet18": dict(width=4)}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_and_features_feed_the_classifier(name, shape):
    model = build_model(name, input_shape=shape, num_classes=7, seed=0, **SMALL[name])
    model.eval()
    x = torch.randn(3, *shape)
    seen = {}
    hook = model.classifier.register_forward_hook(lambda m, inp, out: seen.update(h=inp[0]))
    logits = model(x)
    hook.remove()
    feats = model.features(x)
    assert logits.shape == (3, 7)
    assert feats.shape == (3, model.feature_dim)
    assert torch.equal(seen["h"], feats)
    assert torch.equal(logits, model.classifier(feats))
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.feature_dim
    assert list(model.children())[-1] is model.classifier
    assert list(model.modules())[-1] is model.classifier
    assert (feats >= 0).all()  # taken after the final ReLU


def test_mlp_accepts_vectors_and_batchnorm_option():
    m = build_model("mlp", input_shape=(5,), num_classes=3, width=8, depth=4)
    assert m(torch.randn(2, 5)).shape == (2, 3)
    assert not any(isinstance(x, nn.BatchNorm1d) for x in m.modules())
    assert sum(isinstance(x, nn.Linear) for x in m.modules()) == 5
    bn = build_model("mlp", input_shape=(5,), num_classes=3, width=8, depth=4, batchnorm=True)
    assert sum(isinstance(x, nn.BatchNorm1d) for x in bn.modules()) == 4


def test_cnn_batchnorm_default_and_off():
    for name in ("vgg", "resnet18"):
        on = build_model(name, input_shape=(1, 8, 8), num_classes=3, width=2)
        off = build_model(name, input_shape=(1, 8, 8), num_classes=3, width=2, batchnorm=False)
        assert any(isinstance(x, nn.BatchNorm2d) for x in on.modules())
        assert not any(isinstance(x, (nn.BatchNorm1d, nn.BatchNorm2d)) for x in off.modules())
        assert off(torch.randn(2, 1, 8, 8)).shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# parameter counts from closed forms


def mlp_params(d_in, width, depth, c, bn):
    return (d_in * width + width + (depth - 1) * (width * width + width) + width * c + c
            + (2 * width * depth if bn else 0))


def resnet18_params(in_ch, w, c):
    conv = lambda i, o, k: i * o * k * k  # noqa: E731  (bias-free: followed by BN)
    bn = lambda o: 2 * o  # noqa: E731
    total = conv(in_ch, w, 3) + bn(w)
    ch = w
    for mult in (1, 2, 4, 8):
        out = w * mult
        for block in range(2):
            i = ch if block == 0 else out
            total += conv(i, out, 3) + bn(out) + conv(out, out, 3) + bn(out)
            if i != out:
                total += conv(i, out, 1) + bn(out)
        ch = out
    return total + ch * c + c


def vgg_params(in_ch, w, depth, c):
    total, ch = 0, in_ch
    for stage, n in enumerate(VGG_CONFIGS[depth]):
        out = w * (1, 2, 4, 8, 8)[stage]
        for _ in range(n):
            total += ch * out * 9 + 2 * out
            ch = out
    hidden = 8 * w
    return total + ch * hidden + hidden + 2 * hidden + hidden * c + c  # Linear, BN1d, classifier


def test_parameter_counts():
    m = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, width=32, depth=3)
    assert count_parameters(m) == mlp_params(64, 32, 3, 10, False)
    m = build_model("mlp", input_shape=(1, 28, 28), num_classes=10, width=32, depth=2,
                    batchnorm=True)
    assert count_parameters(m) == mlp_params(784, 32, 2, 10, True)
    r = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10)
    n = count_parameters(r)
    assert n == resnet18_params(3, 64, 10)
    assert 11.0e6 < n < 11.3e6  # the usual "11M" of ResNet-18 on CIFAR-10
    assert count_parameters(build_model("resnet18", input_shape=(1, 28, 28), num_classes=10,
                                        width=8)) == resnet18_params(1, 8, 10)
    for depth in VGG_CONFIGS:
        v = build_model("vgg", input_shape=(3, 32, 32), num_classes=10, width=4, depth=depth)
        assert count_parameters(v) == vgg_params(3, 4, depth, 10)


# ---------------------------------------------------------------------------------------------
# fixed ETF classifier


@pytest.mark.parametrize("name", MODELS)
def test_fixed_etf_classifier_is_etf_and_never_trained(name):
    c = 5
    model = build_model(name, input_shape=(1, 8, 8), num_classes=c, fixed_etf_classifier=True,
                        seed=0, **SMALL[name])
    w = model.classifier.weight.detach().double().numpy()
    assert is_simplex_etf(w, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)
    cos = (w @ w.T)[~np.eye(c, dtype=bool)]
    np.testing.assert_allclose(cos, -1.0 / (c - 1), atol=1e-6)
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert not model.classifier.weight.requires_grad and not model.classifier.bias.requires_grad
    assert count_parameters(model, trainable_only=True) == (
        count_parameters(model) - c * model.feature_dim - c)

    w0 = model.classifier.weight.detach().clone()
    b0 = model.classifier.bias.detach().clone()
    others0 = [p.detach().clone() for p in model.body.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)),
                                           torch.arange(4) % c)
        loss.backward()
        assert model.classifier.weight.grad is None and model.classifier.bias.grad is None
        opt.step()
    assert torch.equal(model.classifier.weight, w0) and torch.equal(model.classifier.bias, b0)
    assert any(not torch.equal(p, q) for p, q in zip(model.body.parameters(), others0,
                                                      strict=True))


def test_fix_classifier_scale_seed_and_errors():
    m = build_model("mlp", input_shape=(6,), num_classes=4, width=9, depth=1)
    fix_classifier_to_etf(m, scale=2.5, seed=3)
    w = m.classifier.weight.detach().double().numpy()
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 2.5, rtol=1e-6)
    assert is_simplex_etf(w, atol=1e-6)
    assert np.count_nonzero(np.abs(w) > 1e-9) > 4 * 4  # rotated: not confined to 4 coordinates
    narrow = build_model("mlp", input_shape=(6,), num_classes=5, width=3, depth=1)
    with pytest.raises(ValueError, match="feature_dim >= 4"):
        fix_classifier_to_etf(narrow)
    with pytest.raises(TypeError, match="classifier"):
        fix_classifier_to_etf(nn.Linear(3, 3))
    # d = C − 1 is the smallest dimension that holds the ETF
    tight = build_model("mlp", input_shape=(6,), num_classes=5, width=4, depth=1,
                        fixed_etf_classifier=True)
    assert is_simplex_etf(tight.classifier.weight.detach().numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# seeds and errors


@pytest.mark.parametrize("name", MODELS)
def test_seeded_construction_is_deterministic_and_leaves_global_rng(name):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model(name, input_shape=(1, 8, 8), num_classes=3, seed=5, **SMALL[name])
    assert torch.equal(torch.rand(3), expected_next)
    b = build_model(name, input_shape=(1, 8, 8), num_classes=3, seed=5, **SMALL[name])
    c = build_model(name, input_shape=(1, 8, 8), num_classes=3, seed=6, **SMALL[name])
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="densenet"), "valid choices: mlp, vgg, resnet18"),
    (dict(name="vgg", input_shape=(64,)), "image inputs"),
    (dict(name="vgg", depth=12), r"\[11, 13, 16, 19\]"),
    (dict(name="resnet18", depth=34), "depth 18"),
    (dict(name="mlp", width=0), "width"),
    (dict(name="mlp", num_classes=1), "num_classes"),
    (dict(name="mlp", input_shape=(0, 3)), "input_shape"),
])
def test_bad_arguments(kwargs, match):
    kw = dict(input_shape=(1, 8, 8), num_classes=3) | kwargs
    with pytest.raises(ValueError, match=match):
        build_model(kw.pop("name"), **kw)


def test_vgg_pooling_adapts_to_small_inputs():
    # five pools would take 8×8 below 1×1; the model skips pools at 1×1
    v = build_model("vgg", input_shape=(1, 8, 8), num_classes=3, width=2, depth=11)
    pools = sum(isinstance(m, nn.MaxPool2d) for m in v.modules())
    assert pools == int(math.log2(8))
    v32 = build_model("vgg", input_shape=(3, 32, 32), num_classes=3, width=2, depth=11)
    assert sum(isinstance(m, nn.MaxPool2d) for m in v32.modules()) == 5
