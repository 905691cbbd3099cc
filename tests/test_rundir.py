"""The run directory (ncollapse.rundir): what RunWriter writes is what load_run reads, the
reader's tolerance of damage, and the writer's promises (no overwrite, atomic history)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_run

from ncollapse import RunWriter, measure
from ncollapse.rundir import (
    RunExists,
    config_differences,
    is_run_dir,
    load_run,
    load_runs,
    load_snapshot,
    read_jsonl,
    run_summary,
)
from ncollapse.training import measurement_epochs


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {
        "full": write_run(base / "full", epochs=60, measurements=12, onset=15),
        "crashed": write_run(base / "crashed", epochs=60, measurements=12, onset=10,
                             crash_at=30, truncate_last_line=True, with_weights=False, seed=1),
    }


# ----------------------------------------------------------------------------- reading


def test_load_run_reads_what_the_writer_logged(runs_dir):
    full = runs_dir["full"]
    run = load_run(full.path)
    expected = measurement_epochs(60, 12)
    assert full.epochs == expected
    assert [r["epoch"] for r in run.metrics] == expected
    assert run.state == "finished" and run.problems == []
    assert run.tpt_onset == 15 and run.last_epoch == 60 and run.total_epochs == 60
    assert sorted(run.snapshots) == expected
    assert len(run.epochs) == 60
    x, y = run.series("train.nc1")
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y, [full.rows[e]["train"]["nc1"] for e in expected])
    _, acc = run.series("test_accuracy")
    np.testing.assert_array_equal(acc, [full.rows[e]["test_accuracy"] for e in expected])
    ex, ey = run.series("train_error", source="epochs")
    np.testing.assert_array_equal(ey, [full.train_error[int(e)] for e in ex])
    assert run.config["optim"]["epochs"] == 60 and run.config["data"]["dataset"] == "gaussian"


def test_snapshots_hold_the_logged_arrays(runs_dir):
    run = load_run(runs_dir["full"].path)
    snap = load_snapshot(run.snapshots[60])
    assert snap["features"].dtype == np.float32 and snap["labels"].dtype == np.int64
    assert int(snap["epoch"]) == 60
    assert float(snap["nc1"]) == runs_dir["full"].rows[60]["train"]["nc1"]
    # the class means of the snapshot's own features, in float64
    f, y = snap["features"].astype(np.float64), snap["labels"]
    for c in range(snap["means"].shape[0]):
        np.testing.assert_allclose(snap["means"][c], f[y == c].mean(axis=0), rtol=1e-12)
    assert {"weight", "bias", "global_mean"} <= set(snap)


def test_crashed_run_keeps_what_exists_and_says_what_is_missing(runs_dir):
    run = load_run(runs_dir["crashed"].path)
    measured = [e for e in measurement_epochs(60, 12) if e <= 30]
    # the last row was cut in half by the "crash": it is dropped, the rest is kept
    assert [r["epoch"] for r in run.metrics] == measured[:-1]
    text = " ".join(run.problems)
    assert "truncated" in text and "failed at epoch 30 of 60" in text
    assert "RuntimeError: simulated crash" in run.status["message"]
    assert run.state == "failed"
    _, y = run.series("train.self_duality")
    assert np.isnan(y).all()


def test_status_missing_tpt_from_epochs(tmp_path):
    run_dir = write_run(tmp_path / "r", epochs=30, measurements=6, onset=9,
                        snapshots=False).path
    (run_dir / "status.json").unlink()
    run = load_run(run_dir)
    assert run.tpt_onset == 9  # first epoch of epochs.jsonl with zero training error
    assert run.state == "unknown"
    assert any("status.json is missing" in p for p in run.problems)
    assert any("snapshots/ is missing" in p for p in run.problems)


def test_csv_fallback_gives_the_same_values(tmp_path):
    a = write_run(tmp_path / "a", epochs=30, measurements=6, snapshots=False).path
    b = write_run(tmp_path / "b", epochs=30, measurements=6, snapshots=False).path
    (b / "metrics.jsonl").unlink()
    ra, rb = load_run(a), load_run(b)
    for key in ("train.nc1", "test.ncc_mismatch", "train_loss", "test_accuracy"):
        np.testing.assert_array_equal(ra.series(key)[0], rb.series(key)[0])
        np.testing.assert_array_equal(ra.series(key)[1], rb.series(key)[1])


def test_damaged_middle_line_and_config(tmp_path):
    run_dir = write_run(tmp_path / "r", epochs=30, measurements=6, snapshots=False).path
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[2] = "{not json"
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "config.toml").write_text("[run\nbroken")
    run = load_run(run_dir)
    assert len(run.metrics) == len(lines) - 1
    assert any("1 unreadable line(s) skipped (line 3)" in p for p in run.problems)
    assert run.config is None and any("config.toml is unreadable" in p for p in run.problems)
    with pytest.raises(ValueError, match="line 3"):  # strict without a problems list
        read_jsonl(run_dir / "metrics.jsonl")


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="one label per run"):
        load_runs([tmp_path / "x"], labels=["a", "b"])
    assert not is_run_dir(tmp_path / "empty") and not is_run_dir(tmp_path / "nope")


def test_duplicate_names_are_made_unique(tmp_path):
    a = write_run(tmp_path / "a" / "run", epochs=10, measurements=3, snapshots=False).path
    b = write_run(tmp_path / "b" / "run", epochs=10, measurements=3, snapshots=False).path
    names = [r.name for r in load_runs([a, b])]
    assert names == ["a/run", "b/run"]


def test_run_summary_of_a_real_training(trained_run):
    s = run_summary(trained_run)
    run = load_run(trained_run)
    last = run.metrics[-1]
    assert s["state"] == "finished" and s["epoch"] == s["epochs"] == 30
    assert s["nc1"] == last["train"]["nc1"] and s["final_epoch"] == 30
    assert s["nc4_ncc_mismatch"] == last["train"]["ncc_mismatch"]
    assert s["tpt_onset_epoch"] == run.tpt_onset is not None
    onset_row = run.row_at(run.tpt_onset)
    assert s["nc1_at_onset"] == onset_row["train"]["nc1"]


# ----------------------------------------------------------------------------- writing


def test_a_plain_loop_writes_a_run_that_the_readers_understand(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    with RunWriter(tmp_path / "mine", {"optim": {"lr": 0.1}, "note": "my loop"},
                   epochs=3) as run:
        for epoch in (1, 2, 3):
            feats = rng.standard_normal((60, 5)) / epoch + np.eye(3, 5)[labels] * epoch
            m = measure(feats, labels)
            run.log_epoch(epoch, train_loss=1.0 / epoch, train_error=0.0 if epoch > 1 else 0.1)
            run.log_measurement(epoch, train=m, snapshot={"features": feats, "labels": labels})
    loaded = load_run(tmp_path / "mine")
    assert loaded.state == "finished" and loaded.total_epochs == 3 and loaded.tpt_onset == 2
    assert loaded.config["optim"] == {"lr": 0.1} and loaded.config["note"] == "my loop"
    assert sorted(loaded.snapshots) == [1, 2, 3]
    assert loaded.metrics[-1]["train"]["nc1"] == m.nc1


def test_writer_refuses_existing_runs_and_foreign_files(tmp_path):
    written = write_run(tmp_path / "run", epochs=5, measurements=2, snapshots=False)
    before = (written.path / "metrics.jsonl").read_bytes()
    with pytest.raises(RunExists, match="already holds a run; continue it with --resume"):
        RunWriter(written.path, written.config).open()
    assert (written.path / "metrics.jsonl").read_bytes() == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.csv").write_text("my own numbers")
    with pytest.raises(RunExists, match="not empty and not a run directory.*metrics.csv"):
        RunWriter(mine, written.config).open()
    assert (mine / "metrics.csv").read_text() == "my own numbers"
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.csv"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunExists, match="not a directory"):
        RunWriter(tmp_path / "file", written.config).open()


def test_failed_snapshot_takes_its_row_out_of_the_history(tmp_path, monkeypatch):
    import ncollapse.rundir.writer as W

    real = W._save_npz

    def failing(path, arrays):
        if int(arrays["epoch"]) == 2:
            raise OSError(28, "No space left on device")
        real(path, arrays)

    monkeypatch.setattr(W, "_save_npz", failing)
    labels = np.repeat(np.arange(2), 5)
    feats = np.arange(20.0).reshape(10, 2)
    with pytest.raises(OSError, match="No space left"):
        with RunWriter(tmp_path / "r", {"optim": {"epochs": 3}}, epochs=3) as run:
            for epoch in (1, 2, 3):
                run.log_measurement(epoch, train={"nc1": 1.0 / epoch},
                                    snapshot={"features": feats, "labels": labels})
                run.flush()
    loaded = load_run(tmp_path / "r")
    assert [r["epoch"] for r in loaded.metrics] == [1] and sorted(loaded.snapshots) == [1]
    assert loaded.state == "failed" and "No space left" in loaded.status["message"]


def test_config_differences_ignore_how_to_run(runs_dir):
    cfg = runs_dir["full"].config
    assert config_differences(cfg, cfg.replace(device="cuda", deterministic=True)) == []
    assert config_differences(cfg, cfg.replace(lr=0.2, epochs=3)) == ["epochs", "lr"]


def test_status_file_is_json_with_the_planned_epochs(runs_dir):
    status = json.loads((runs_dir["full"].path / "status.json").read_text())
    assert status["state"] == "finished" and status["epochs"] == 60
    assert status["tpt_onset_epoch"] == 15
