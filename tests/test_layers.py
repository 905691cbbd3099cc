"""Layer-wise measurement (measure_model / collect_features with layers=, pool=, classifier
found from the model's output). References are computed here by running the model's parts by
hand and, for the nearest-class-centre error, by brute-force float64 distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ncollapse import measure
from ncollapse.collect import collect_features, measure_model, training_means

C = 4


class Net(nn.Module):
    """conv -> relu -> conv -> relu -> global average pool -> fc, with fc registered FIRST and
    a 16-way nn.Linear inside the body registered after it (the issue's silent wrong pick)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(6, C)
        self.conv1 = nn.Conv2d(1, 5, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.aux = nn.Linear(6, 16)  # registered last, not on the path to the output
        self.double()  # float64 throughout: streamed and one-shot results agree to 1e-9

    def parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        out["conv1"] = h = self.conv1(x)
        out["relu1"] = h = self.relu1(h)
        out["conv2"] = h = self.conv2(h)
        out["relu2"] = h = self.relu2(h)
        out["pool"] = h = self.pool(h)
        out["flat"] = h = self.flat(h)
        self.aux(h)  # computed and thrown away
        out["fc"] = self.fc(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts(x)["fc"]


class CountingLoader:
    """A re-iterable loader that counts how often it is iterated and how many batches it gives."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, bs: int) -> None:
        self.batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]
        self.iterations = 0
        self.yielded = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        self.iterations += 1
        for b in self.batches:
            self.yielded += 1
            yield b


def _data(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % C
    x = torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64) + y[:, None, None, None] * 0.7
    return x, y


def _by_hand(model: Net, x: torch.Tensor, bs: int) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():  # batch by batch as the loader does, so the rounding agrees
        parts = [model.parts(x[i:i + bs]) for i in range(0, x.shape[0], bs)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _ncc_error(feats: torch.Tensor, labels: torch.Tensor, means: np.ndarray | None = None
               ) -> float:
    h = feats.double().numpy()
    y = labels.numpy()
    if means is None:
        means = np.stack([h[y == c].mean(0) for c in range(C)])
    dist = ((h[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    return float((dist.argmin(1) != y).mean())


def _same(got: dict, want: dict, skip: tuple[str, ...] = (), rel: float = 1e-9) -> None:
    for k, v in want.items():
        if k in skip:
            continue
        if v is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(v, rel=rel, abs=1e-9), k


def test_fc_registered_before_body_is_picked() -> None:
    model = Net()
    x, y = _data()
    got = collect_features(model, DataLoader(TensorDataset(x, y), batch_size=16))
    assert torch.equal(got.weight, model.fc.weight) and torch.equal(got.bias, model.fc.bias)
    hand = _by_hand(model, x, 16)
    torch.testing.assert_close(got.features, hand["flat"], rtol=0, atol=0)
    m = measure_model(model, DataLoader(TensorDataset(x, y), batch_size=16))
    want = measure(hand["flat"], y, weight=model.fc.weight.detach(),
                   bias=model.fc.bias.detach(), logits=hand["fc"]).to_dict()
    _same(m.to_dict(), want)
    assert m.accuracy == pytest.approx(float((hand["fc"].argmax(1) == y).float().mean()))


def test_each_layer_equals_measure_on_hand_features() -> None:
    model = Net()
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    # given out of order, as a module, a glob pattern and names: back in forward order
    got = measure_model(model, loader, layers=["flat", model.relu2, "conv*"], pool="avg")
    assert list(got) == ["conv1", "conv2", "relu2", "flat"]
    hand = _by_hand(model, x, 16)
    for name, m in got.items():
        h = hand[name]
        h = h.mean(dim=(2, 3)) if h.ndim == 4 else h
        # relu2 average-pooled is exactly what fc receives, so it gets the classifier too
        if name in ("relu2", "flat"):  # the classifier's input: every metric
            want = measure(h, y, weight=model.fc.weight.detach(), bias=model.fc.bias.detach(),
                           logits=hand["fc"]).to_dict()
            _same(m.to_dict(), want)
            assert m.ncc_mismatch is not None and m.ncc_error == pytest.approx(_ncc_error(h, y))
        else:  # no classifier acts here: the metrics that need none, NC4 against the labels
            want = measure(h, y, num_classes=C).to_dict()
            _same(m.to_dict(), want, skip=("ncc_error",))
            assert m.self_duality is None and m.accuracy is None and m.ncc_mismatch is None
            assert m.ncc_error == pytest.approx(_ncc_error(h, y))


def test_one_or_two_passes_however_many_layers() -> None:
    model = Net()
    x, y = _data()
    many = ["conv1", "relu1", "conv2", "relu2", "pool", "flat"]
    loader = CountingLoader(x, y, bs=16)
    measure_model(model, loader, layers=many, pool="avg", cache=True)
    assert (loader.iterations, loader.yielded) == (1, len(loader))
    loader = CountingLoader(x, y, bs=16)
    out = measure_model(model, loader, layers=many, pool="avg", cache=False)
    assert (loader.iterations, loader.yielded) == (2, 2 * len(loader))
    assert all(m.nc1 is not None for m in out.values())


@pytest.mark.parametrize("pool", ["flatten", "avg", "max", "callable"])
def test_pooling_modes_match_hand_computation(pool: str) -> None:
    model = Net()
    x, y = _data(40)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    hand = _by_hand(model, x, 10)["relu1"]  # (n, 5, 5, 5)
    want = {"flatten": hand.flatten(1), "avg": hand.mean(dim=(2, 3)),
            "max": hand.amax(dim=(2, 3)), "callable": hand[:, :, 2, 2]}[pool]
    arg = (lambda t: t[:, :, 2, 2]) if pool == "callable" else pool
    got = collect_features(model, loader, layers=["relu1"], pool=arg)["relu1"]
    torch.testing.assert_close(got.features, want, rtol=0, atol=0)
    m = measure_model(model, loader, layers=["relu1"], pool=arg)["relu1"]
    _same(m.to_dict(), measure(want, y, num_classes=C).to_dict(), skip=("ncc_error",))


def test_test_set_nc4_against_training_means() -> None:
    model = Net()
    x, y = _data(80)
    xt, yt = _data(40, seed=5)
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    test = DataLoader(TensorDataset(xt, yt), batch_size=16)
    layers = ["relu1", "flat"]
    means = training_means(model, train, layers=layers, pool="avg")
    hand, hand_t = _by_hand(model, x, 16), _by_hand(model, xt, 16)
    ref = {}
    for name in layers:
        h = hand[name].mean(dim=(2, 3)) if hand[name].ndim == 4 else hand[name]
        ref[name] = np.stack([h[y == c].double().mean(0).numpy() for c in range(C)])
        np.testing.assert_allclose(means[name].numpy(), ref[name], rtol=1e-12, atol=1e-12)
    got = measure_model(model, test, layers=layers, pool="avg", ncc_means=means)
    ht = hand_t["relu1"].mean(dim=(2, 3))
    assert got["relu1"].ncc_error == pytest.approx(_ncc_error(ht, yt, ref["relu1"]))
    # the classifier's layer: NC4 compares the network with the nearest *training* mean
    h = hand_t["flat"].double().numpy()
    nearest = ((h[:, None, :] - ref["flat"][None]) ** 2).sum(-1).argmin(1)
    want = float((nearest != hand_t["fc"].argmax(1).numpy()).mean())
    assert got["flat"].ncc_mismatch == pytest.approx(want)


class _TwoHeads(nn.Module):
    def __init__(self, same: bool) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(3, 2)
        if same:
            self.b.load_state_dict(self.a.state_dict())
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        za, zb = self.a(x), self.b(x)
        return zb if self.same else za + zb


def test_classifier_none_or_several_fit_is_a_clear_error() -> None:
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 2
    loader = [(x, y)]
    with pytest.raises(ValueError, match="several nn.Linear.*'a', 'b'.*classifier='NAME'"):
        measure_model(_TwoHeads(same=True), loader)
    with pytest.raises(ValueError, match="none of their outputs.*'a', 'b'.*classifier="):
        measure_model(_TwoHeads(same=False), loader)
    # naming it, or measuring without one, works
    assert measure_model(_TwoHeads(same=False), loader, classifier="a").self_duality is not None
    m = measure_model(_TwoHeads(same=False), loader, layers=["a"], classifier=False,
                      num_classes=2)["a"]
    assert m.ncc_error is not None and m.accuracy is None


def test_layer_errors_name_the_problem() -> None:
    model = Net()
    x, y = _data(16)
    loader = [(x, y)]
    with pytest.raises(ValueError, match="pattern 'block\\*' matches no module"):
        measure_model(model, loader, layers=["block*"])
    with pytest.raises(ValueError, match="either layer= .* or layers="):
        measure_model(model, loader, layer="flat", layers=["flat"])
    with pytest.raises(ValueError, match="pool must be one of"):
        measure_model(model, loader, layers=["flat"], pool="mean")
    with pytest.raises(ValueError, match="ncc_means must be a dict"):
        measure_model(model, loader, layers=["flat", "pool"], ncc_means=torch.zeros(C, 6))


def test_glob_patterns_stay_within_one_name_part() -> None:
    from collections import OrderedDict

    from ncollapse.collect import select_layers

    def block() -> nn.Sequential:
        return nn.Sequential(nn.Linear(2, 2), nn.ReLU())

    model = nn.Sequential(OrderedDict([("layer1", block()), ("layer2", block()),
                                       ("layer10", block()), ("head", nn.Linear(2, 2))]))
    names = lambda pats: [n for n, _ in select_layers(model, pats)]  # noqa: E731
    assert names(["layer*"]) == ["layer1", "layer2", "layer10"]
    assert names(["layer?"]) == ["layer1", "layer2"]
    assert names(["layer1.**"]) == ["layer1.0", "layer1.1"]
    assert names(["layer[!1]*"]) == ["layer2"]
    assert names(["head", "layer2.*", "head"]) == ["layer2.0", "layer2.1", "head"]


def test_train_tracks_named_layers_and_plot_draws_them(tmp_path) -> None:
    from ncollapse.cli import main
    from ncollapse.plots import depth_figure
    from ncollapse.rundir import load_run

    out = tmp_path / "run"
    assert main(["train", "--dataset", "gaussian", "--model", "mlp", "--width", "16",
                 "--depth", "3", "--epochs", "4", "--num-measurements", "3", "--batch-size",
                 "50", "--layers", "body.1", "body.*", "--no-progress", "--out", str(out)]) == 0
    run = load_run(out)
    assert run.config["tracking"]["layers"] == ["body.1", "body.*"]
    rows = [r for r in run.metrics if r.get("layers")]
    assert rows and len(rows) == len(run.metrics)
    names = list(rows[-1]["layers"])
    assert names == [f"body.{i}" for i in range(len(names))]  # forward order, each once
    last = rows[-1]["layers"][names[-1]]
    # the last body layer feeds the classifier: its NC1 is the run's own train NC1
    # (float32 features, batched differently: agreement to float32 accuracy)
    assert last["nc1"] == pytest.approx(rows[-1]["train"]["nc1"], rel=1e-5)
    assert rows[-1]["layers"]["body.0"]["self_duality"] is None  # no classifier acts there
    assert rows[-1]["layers"]["body.0"]["ncc_error"] is not None
    fig = depth_figure(run)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names
