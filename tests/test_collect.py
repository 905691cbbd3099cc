"""Feature collection with forward hooks and measure_model (ncollapse.collect)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ncollapse import measure
from ncollapse.collect import collect_features, measure_model


def _mlp(c: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, c),
    )


class _CNN(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.Dropout(0.3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, c)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _data(n: int, shape: tuple[int, ...], c: int, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.arange(n) % c
    return x, y


def _loader(x: torch.Tensor, y: torch.Tensor, bs: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=False)


def _warm_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Give BatchNorm running statistics that differ from the batch statistics."""
    model.train()
    with torch.no_grad():
        model(x[:20] * 2 + 1)


def _same(a: dict[str, object], b: dict[str, object], rel: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for k, v in b.items():
        if v is None:
            assert a[k] is None, k
        else:
            assert a[k] == pytest.approx(v, rel=rel, abs=1e-12), k


def test_collect_mlp_defaults_match_manual_features() -> None:
    model = _mlp()
    x, y = _data(50, (5,), 3)
    _warm_bn(model, x)
    got = collect_features(model, _loader(x, y))
    assert model.training  # train mode restored
    model.eval()
    with torch.no_grad():  # batch by batch as the loader does, so even the rounding agrees
        feats = torch.cat([model[:-1](x[i:i + 16]) for i in range(0, 50, 16)])
        logits = torch.cat([model(x[i:i + 16]) for i in range(0, 50, 16)])
    torch.testing.assert_close(got.features, feats, rtol=0, atol=0)
    torch.testing.assert_close(got.logits, logits, rtol=0, atol=0)
    assert torch.equal(got.labels, y)
    assert torch.equal(got.weight, model[-1].weight) and torch.equal(got.bias, model[-1].bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_measure_model_equals_measure_on_manual_features(dtype: torch.dtype) -> None:
    model = _CNN().to(dtype)
    x, y = _data(70, (1, 6, 6), 4, seed=2)
    x = x.to(dtype)
    _warm_bn(model, x)
    model.eval()
    with torch.no_grad():  # batch by batch as the loader does, so even the rounding agrees
        feats = torch.cat([model.features(x[i:i + 13]) for i in range(0, 70, 13)])
        logits = torch.cat([model(x[i:i + 13]) for i in range(0, 70, 13)])
    want = measure(feats, y, weight=model.fc.weight.detach(), bias=model.fc.bias.detach(),
                   logits=logits).to_dict()
    assert want["ncc_mismatch"] is not None
    # The tolerance: 1e-9 on float64 inputs, 1e-6 on float32 (measured in float32
    # with float64 accumulation, so batching changes the last float32 digits).
    rel = 1e-9 if dtype == torch.float64 else 1e-6
    for cache in (True, False, 10):  # replay from memory, second forward pass, overflowing cache
        got = measure_model(model, _loader(x, y, bs=13), cache=cache).to_dict()
        _same(got, want, rel=rel)
    _same(collect_features(model, _loader(x, y, bs=13)).measure().to_dict(), want, rel=rel)


def test_layer_by_name_and_output_vs_input() -> None:
    model = _CNN()
    x, y = _data(40, (1, 5, 5), 4, seed=3)
    ref = collect_features(model, _loader(x, y))
    by_pool = collect_features(model, _loader(x, y), layer="pool", use="output")
    torch.testing.assert_close(by_pool.features, ref.features, rtol=0, atol=0)
    by_module = collect_features(model, _loader(x, y), layer=model.fc, classifier="fc")
    torch.testing.assert_close(by_module.features, ref.features, rtol=0, atol=0)
    mlp = _mlp()
    x, y = _data(30, (5,), 3)
    out_relu = collect_features(mlp, _loader(x, y), layer="5", use="output")
    in_head = collect_features(mlp, _loader(x, y), layer="6", use="input")
    torch.testing.assert_close(out_relu.features, in_head.features, rtol=0, atol=0)
    # The output of the second Linear (before ReLU) differs from the head's input.
    pre = collect_features(mlp, _loader(x, y), layer="4", use="output")
    assert (pre.features < 0).any() and not (in_head.features < 0).any()


def test_modes_and_hooks_restored_also_on_error() -> None:
    model = _CNN()
    model.train()
    model.body[1].eval()  # mixed modes must come back exactly
    modes = {n: m.training for n, m in model.named_modules()}
    x, y = _data(32, (1, 4, 4), 4)
    seen: list[bool] = []

    def probe(m: nn.Module, _a: object, _o: object) -> None:
        seen.append(m.training)

    handle = model.body[3].register_forward_hook(probe)

    def failing() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield x[:8], y[:8]
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        measure_model(model, failing())
    measure_model(model, _loader(x, y))
    handle.remove()
    assert seen and not any(seen)  # dropout ran in eval mode
    assert {n: m.training for n, m in model.named_modules()} == modes
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_dict_batches_and_max_batches() -> None:
    model = _mlp()
    x, y = _data(48, (5,), 3)
    batches = [{"image": x[i:i + 16], "target": y[i:i + 16]} for i in range(0, 48, 16)]
    got = collect_features(model, batches, max_batches=2, progress=True)
    assert got.features.shape == (32, 8)
    assert torch.equal(got.labels, y[:32])
    custom = [{"a": x[:16], "b": y[:16]}]
    assert collect_features(model, custom, input_key="a", label_key="b").labels.shape == (16,)
    with pytest.raises(ValueError, match="available keys: a, b; name one with input_key"):
        collect_features(model, custom)


def test_one_shot_iterator_without_cache() -> None:
    model = _mlp()
    x, y = _data(30, (5,), 3)
    gen = ((x[i:i + 10], y[i:i + 10]) for i in range(0, 30, 10))
    with pytest.warns(UserWarning, match="one-shot"):
        m = measure_model(model, gen, cache=False)
    # Pass 1 alone: no NC4, and NC1 only with the full d x d within-class scatter.
    assert m.ncc_mismatch is None and m.nc1 is None and m.nc1_trace_ratio is not None
    gen = ((x[i:i + 10], y[i:i + 10]) for i in range(0, 30, 10))
    with pytest.warns(UserWarning, match="one-shot"):
        full = measure_model(model, gen, cache=False, full_covariance=True)
    assert full.nc1 == pytest.approx(measure_model(model, _loader(x, y, bs=10)).nc1, rel=1e-6)
    gen = ((x[i:i + 10], y[i:i + 10]) for i in range(0, 30, 10))
    with pytest.raises(ValueError, match="one-shot"):
        measure_model(model, gen, cache=False, two_pass=True)
    gen = ((x[i:i + 10], y[i:i + 10]) for i in range(0, 30, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert measure_model(model, gen).ncc_mismatch is not None  # cached: no warning
    assert measure_model(model, _loader(x, y), two_pass=False).ncc_mismatch is None


def test_clear_errors() -> None:
    x, y = _data(8, (5,), 2)
    no_linear = nn.Sequential(nn.Conv1d(1, 2, 1))
    with pytest.raises(ValueError, match="no nn.Linear"):
        collect_features(no_linear, _loader(x, y))
    model = _mlp()
    with pytest.raises(ValueError, match="'bodyy' is not a module name.*available: 0, 1, 2"):
        collect_features(model, _loader(x, y), layer="bodyy")
    cnn = _CNN()
    with pytest.raises(ValueError, match="close names: body"):
        collect_features(cnn, _loader(torch.randn(8, 1, 3, 3), y), layer="bodyy")
    # a layer the classifier does not act on is measured without it (no shape error)
    first = collect_features(model, _loader(x, y), layer="0", use="output")
    assert first.features.shape == (8, 16)
    assert first.weight is None and first.bias is None and first.logits is None
    with pytest.raises(ValueError, match="use must be"):
        collect_features(model, _loader(x, y), use="middle")
    with pytest.raises(ValueError, match="not a submodule"):
        collect_features(model, _loader(x, y), classifier=nn.Linear(8, 3))
    with pytest.raises(ValueError, match="2-D weight"):
        collect_features(model, _loader(x, y), classifier="2")
    with pytest.raises(ValueError, match="no batches"):
        collect_features(model, [])
    with pytest.raises(ValueError, match="labels must be integral"):
        collect_features(model, [(x, y.float() + 0.5)])
