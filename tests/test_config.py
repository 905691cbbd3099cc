"""TrainConfig: presets, TOML files, precedence, validation messages, save/load round trip."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from ncollapse.config import (
    PRESETS,
    TrainConfig,
    load_config,
    paper_lr_grid,
    read_toml,
    save_config,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_defaults_validate_and_every_preset_loads():
    TrainConfig().validate()
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.preset == name
        for key, value in PRESETS[name].items():
            assert getattr(cfg, key) == value


def test_papyan_presets_follow_the_paper_protocol():
    for name in ("papyan-mnist", "papyan-fashion-mnist", "papyan-cifar10"):
        cfg = load_config(name)
        assert (cfg.optimizer, cfg.momentum, cfg.weight_decay) == ("sgd", 0.9, 5e-4)
        assert (cfg.batch_size, cfg.epochs, cfg.schedule) == (128, 350, "step")
        assert cfg.num_measurements == 50 and cfg.device == "auto"


REPRODUCING = Path(__file__).resolve().parents[1] / "docs" / "reproducing.md"


def _rounds_to(shown: str, value: float) -> bool:
    """Whether ``shown`` (e.g. "0.0679") is ``value`` correctly rounded to its decimals."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown) - value) <= 0.5 * 10.0**-decimals


def test_preset_learning_rates_are_the_documented_values():
    """The presets' learning rates are the values docs/reproducing.md states, and the grid
    position it names holds that value (so code, grid and documentation cannot drift)."""
    text = " ".join(REPRODUCING.read_text(encoding="utf-8").split())
    table = dict(re.findall(r"\| `(papyan-[\w-]+)` \|[^|]*\|[^|]*\| ([\d.]+) \|", text))
    assert set(table) == {"papyan-mnist", "papyan-fashion-mnist", "papyan-cifar10"}
    for name, lr in table.items():
        assert _rounds_to(lr, load_config(name).lr), name
    stated = re.search(r"The learning rate ([\d.]+) is the (\d+)(?:st|nd|rd|th) value of the "
                       r"paper's grid", text)
    assert stated is not None
    assert _rounds_to(stated.group(1), paper_lr_grid()[int(stated.group(2)) - 1])
    demo = re.search(r"SGD \(lr ([\d.]+) from the paper's grid", text)
    assert demo is not None and _rounds_to(demo.group(1), load_config("demo").lr)


def test_paper_lr_grid_is_25_log_spaced_values():
    grid = np.array(paper_lr_grid())
    assert grid.shape == (25,)
    assert math.isclose(grid[0], 1e-4, rel_tol=1e-12)
    assert math.isclose(grid[-1], 0.25, rel_tol=1e-12)
    ratios = grid[1:] / grid[:-1]
    assert np.allclose(ratios, (0.25 / 1e-4) ** (1 / 24), rtol=1e-12)


def test_precedence_defaults_preset_file_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({"optim": {"epochs": 7, "lr": 0.01},
                                   "data": {"per_class": 12}}))
    cfg = load_config("demo", path, {"lr": 0.2, "seed": None})
    assert cfg.preset == "demo"
    assert cfg.epochs == 7  # file over preset
    assert cfg.lr == 0.2  # flag over file
    assert cfg.per_class == 12
    assert cfg.width == PRESETS["demo"]["width"]  # preset over default
    assert cfg.seed == TrainConfig().seed  # an unset flag (None) changes nothing


def test_flat_toml_and_preset_named_in_file(tmp_path):
    path = tmp_path / "flat.toml"
    path.write_text('preset = "demo"\nepochs = 3\nbatchnorm = false\n')
    cfg = load_config(path=path)
    assert cfg.preset == "demo" and cfg.epochs == 3 and cfg.batchnorm is False


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match="unknown config key.*learning_rate.*valid keys:.*lr"):
        load_config(path=path)
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(overrides={"nope": 1})


def test_key_in_wrong_section(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[data]\nlr = 0.1\n")
    with pytest.raises(ValueError, match=r"belongs in section \[optim\]"):
        load_config(path=path)


@pytest.mark.parametrize("key,value,pattern", [
    ("optimizer", "rmsprop", "valid choices: sgd, adam"),
    ("schedule", "linear", "valid choices: step, cosine, constant"),
    ("device", "tpu", "valid choices: auto, cpu, cuda"),
    ("dataset", "imagenet", "valid choices:.*digits"),
    ("model", "vit", "valid choices:.*mlp"),
    ("loss", "hinge", "valid choices:.*ce"),
    ("imbalance", "linear", "valid choices: step, exp"),
    ("epochs", 0, "epochs must be a positive integer"),
    ("epochs", 2.5, "epochs must be int"),
    ("lr", -1.0, "lr must be a finite number > 0"),
    ("lr", float("nan"), "lr must be float"),
    ("lr", "fast", "lr must be float"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("ratio", 0.5, "ratio must be a finite number >= 1"),
    ("label_smoothing", 1.0, "label_smoothing must be in"),
    ("measure_test", "maybe", "measure_test must be bool"),
    ("seed", -3, "seed must be a non-negative integer"),
])
def test_bad_values_name_the_problem(key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config(overrides={key: value})


def test_bad_preset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'fast'; valid choices: demo"):
        load_config("fast")
    with pytest.raises(FileNotFoundError):
        load_config(path=tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text("[optim\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(path=tmp_path / "broken.toml")


def test_save_config_round_trip_with_versions(tmp_path):
    cfg = load_config("demo", overrides={"per_class": 40, "root": "/data",
                                         "dataset_options": {}, "seed": 11})
    path = save_config(cfg, tmp_path / "config.toml", extra_run={"created": "now"})
    with open(path, "rb") as fh:
        doc = tomllib.load(fh)
    assert set(doc) == {"run", "data", "model", "optim", "tracking", "versions"}
    assert set(doc["versions"]) == {"python", "torch", "numpy", "ncollapse"}
    assert doc["run"]["seed"] == 11 and doc["data"]["per_class"] == 40
    assert doc["optim"]["lr"] == cfg.lr
    again = load_config(path=path)
    assert again == cfg
    assert "created" not in read_toml(path)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporaries


def test_replace_validates():
    cfg = load_config("demo")
    assert cfg.replace(lr=0.5).lr == 0.5
    with pytest.raises(ValueError, match="valid choices"):
        cfg.replace(schedule="nope")


def test_string_values_from_flags_are_coerced():
    cfg = load_config(overrides={"batchnorm": "true", "per_class": "none", "epochs": "5"})
    assert cfg.batchnorm is True and cfg.per_class is None and cfg.epochs == 5
