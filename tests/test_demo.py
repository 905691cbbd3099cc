"""``ncollapse demo``: reuse / resume / fresh logic (training replaced by a synthetic writer),
and one end-to-end run with real training on a reduced config."""

from __future__ import annotations

import json

import pytest
from _runfactory import make_run

import ncollapse.training
from ncollapse.config import load_config, save_config
from ncollapse.demo import run_demo

QUICK = {"epochs": 12, "num_measurements": 6, "width": 32, "depth": 2, "snapshot_per_class": 6}
FAST = {"overrides": QUICK, "progress": False, "formats": ("png",), "dpi": 40}


@pytest.fixture
def fake_train(monkeypatch):
    """Replace training by writing a synthetic run with the real config; records the calls."""
    calls: list[dict] = []

    def train(config=None, *, out, resume=False, progress=True):
        calls.append({"config": config, "out": out, "resume": resume})
        if config is None:
            config = load_config(path=out / "config.toml")
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.toml")
        make_run(out, classes=10, dim=16, epochs=config.epochs,
                 measurements=config.num_measurements, per_class=4, write_config=False)
        return out

    monkeypatch.setattr(ncollapse.training, "train", train)
    return calls


def _outputs_exist(result) -> None:
    assert result["report"].is_file() and result["overview"].is_file()
    assert result["animation"][0].suffix == ".gif" and result["animation"][0].is_file()
    assert {p.name for p in result["figures"]} >= {"overview.png", "nc1.png"}


def test_demo_trains_then_reuses_then_starts_fresh(fake_train, tmp_path):
    lines: list[str] = []
    out = tmp_path / "demo"
    first = run_demo(out, **FAST, echo=lines.append)
    assert first["trained"] == "new" and first["run"] == out / "run"
    assert fake_train[0]["resume"] is False and fake_train[0]["config"].epochs == 12
    _outputs_exist(first)
    text = "\n".join(lines)
    assert "[1/4] training the demo preset (digits" in text and "[4/4] report" in text
    assert f"report:     {out / 'report.html'}" in text
    assert "zero training error from epoch 3 (TPT onset)" in text

    lines.clear()
    second = run_demo(out, **FAST, echo=lines.append)
    assert second["trained"] == "reused" and len(fake_train) == 1
    assert "reusing the finished run" in lines[0]

    with pytest.raises(ValueError, match="different config.*epochs.*--fresh"):
        run_demo(out, **{**FAST, "overrides": {**QUICK, "epochs": 13}}, echo=lines.append)

    third = run_demo(out, **FAST, fresh=True, echo=lines.append)
    assert third["trained"] == "new" and len(fake_train) == 2


def test_demo_resumes_an_unfinished_run(fake_train, tmp_path):
    out = tmp_path / "demo"
    ncollapse.training.train(load_config(preset="demo", overrides=QUICK), out=out / "run")
    status_path = out / "run" / "status.json"
    status = json.loads(status_path.read_text())
    status.update(state="running", epoch=5)
    status_path.write_text(json.dumps(status))
    result = run_demo(out, **FAST, echo=lambda _: None)
    assert result["trained"] == "resumed"
    assert fake_train[-1]["resume"] is True and fake_train[-1]["config"] is None


def test_fresh_refuses_to_delete_a_foreign_directory(tmp_path):
    (tmp_path / "demo" / "run").mkdir(parents=True)
    (tmp_path / "demo" / "run" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a run directory; refusing to delete"):
        run_demo(tmp_path / "demo", fresh=True, progress=False, echo=lambda _: None)
    assert (tmp_path / "demo" / "run" / "precious.txt").exists()


@pytest.mark.slow
def test_demo_end_to_end_real_training(tmp_path, capsys):
    """The real pipeline on a reduced config: digits, a small MLP, a few epochs."""
    result = run_demo(tmp_path / "demo", overrides=QUICK, progress=False, dpi=60)
    _outputs_exist(result)
    assert (tmp_path / "demo" / "figures" / "overview.svg").is_file()
    status = json.loads((result["run"] / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == 12
    printed = capsys.readouterr().out
    assert "done in" in printed and "report:" in printed
    html = result["report"].read_text()
    assert html.count("data:image/png;base64,") == 10 and "data:image/gif;base64," in html
