"""``ncollapse demo``: reuse / resume / fresh logic on real (shortened) training, and the full
demo preset end to end, which must show the collapse the README promises."""

from __future__ import annotations

import json

import pytest

import ncollapse.training
from ncollapse.config import load_config
from ncollapse.demo import run_demo
from ncollapse.rundir import load_run

QUICK = {"epochs": 12, "num_measurements": 6, "width": 32, "depth": 2, "snapshot_per_class": 6,
         "per_class": 30, "batch_size": 32, "checkpoint_every": 4}
FAST = {"overrides": QUICK, "progress": False, "formats": ("png",), "dpi": 40}


@pytest.fixture
def train_calls(monkeypatch):
    """The real ``train``, with its calls recorded."""
    calls: list[dict] = []
    real = ncollapse.training.train

    def spy(config=None, *, out, resume=False, progress=True):
        calls.append({"config": config, "out": out, "resume": resume})
        return real(config, out=out, resume=resume, progress=progress)

    monkeypatch.setattr(ncollapse.training, "train", spy)
    return calls


def _outputs_exist(result) -> None:
    assert result["report"].is_file() and result["overview"].is_file()
    assert result["animation"][0].suffix == ".gif" and result["animation"][0].is_file()
    assert {p.name for p in result["figures"]} >= {"overview.png", "nc1.png"}


def test_demo_trains_then_reuses_then_starts_fresh(train_calls, tmp_path):
    lines: list[str] = []
    out = tmp_path / "demo"
    first = run_demo(out, **FAST, echo=lines.append)
    assert first["trained"] == "new" and first["run"] == out / "run"
    assert train_calls[0]["resume"] is False and train_calls[0]["config"].epochs == 12
    _outputs_exist(first)
    text = "\n".join(lines)
    run = load_run(out / "run")
    assert "[1/4] training the demo preset (digits" in text and "[4/4] report" in text
    assert f"report:     {out / 'report.html'}" in text
    assert run.tpt_onset is not None
    assert f"zero training error from epoch {run.tpt_onset} (TPT onset)" in text

    lines.clear()
    second = run_demo(out, **FAST, echo=lines.append)
    assert second["trained"] == "reused" and len(train_calls) == 1
    assert "reusing the finished run" in lines[0]

    with pytest.raises(ValueError, match="different config.*epochs.*--fresh"):
        run_demo(out, **{**FAST, "overrides": {**QUICK, "epochs": 13}}, echo=lines.append)
    # how to run is not what to compute: the same run is reused on another device setting
    assert run_demo(out, **{**FAST, "overrides": {**QUICK, "deterministic": True}},
                    echo=lines.append)["trained"] == "reused"

    third = run_demo(out, **FAST, fresh=True, echo=lines.append)
    assert third["trained"] == "new" and len(train_calls) == 2


def test_demo_resumes_an_unfinished_run(train_calls, tmp_path):
    out = tmp_path / "demo"
    ncollapse.training.train(load_config(preset="demo", overrides=QUICK), out=out / "run",
                             progress=False)
    status_path = out / "run" / "status.json"
    status = json.loads(status_path.read_text())
    status.update(state="running", epoch=5)
    status_path.write_text(json.dumps(status))
    result = run_demo(out, **FAST, echo=lambda _: None)
    assert result["trained"] == "resumed"
    assert train_calls[-1]["resume"] is True and train_calls[-1]["config"] is None
    assert load_run(out / "run").state == "finished"


def test_fresh_refuses_to_delete_a_foreign_directory(tmp_path):
    (tmp_path / "demo" / "run").mkdir(parents=True)
    (tmp_path / "demo" / "run" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a run directory; refusing to delete"):
        run_demo(tmp_path / "demo", fresh=True, progress=False, echo=lambda _: None)
    assert (tmp_path / "demo" / "run" / "precious.txt").exists()


@pytest.mark.slow
def test_demo_end_to_end_shows_the_collapse_the_readme_promises(tmp_path, capsys):
    """The real `ncollapse demo` (the full demo preset): zero training error, then NC1 falls at
    least 10x from the TPT onset to the end and the classifier decides like the nearest class
    centre on every training sample (NC4 = 0)."""
    result = run_demo(tmp_path / "demo", progress=False, dpi=60)
    _outputs_exist(result)
    assert (tmp_path / "demo" / "figures" / "overview.svg").is_file()
    run = load_run(result["run"])
    assert run.state == "finished" and run.last_epoch == run.total_epochs == 300
    assert run.tpt_onset is not None
    nc1_onset = run.value(run.row_at(run.tpt_onset), "train.nc1")
    nc1_end = run.value(run.metrics[-1], "train.nc1")
    assert nc1_end <= nc1_onset / 10, (nc1_onset, nc1_end)
    assert run.value(run.metrics[-1], "train.ncc_mismatch") == 0
    assert run.value(run.metrics[-1], "train_error") == 0
    assert run.value(run.metrics[-1], "test_accuracy") > 0.95
    printed = capsys.readouterr().out
    assert "done in" in printed and "report:" in printed
    html = result["report"].read_text()
    assert html.count("data:image/png;base64,") == 10 and "data:image/gif;base64," in html
