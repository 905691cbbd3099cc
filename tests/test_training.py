"""train(): schedule, measurement epochs, the run directory, metrics against an independent
recomputation from the checkpoint, determinism, divergence, MSE decomposition, lr sweep, CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import ncollapse.training.loop as T
from ncollapse import measure
from ncollapse.cli import main as cli_main
from ncollapse.config import load_config, paper_lr_grid
from ncollapse.data import load_dataset
from ncollapse.io import safe_torch_load
from ncollapse.models import build_model
from ncollapse.rundir import read_jsonl
from ncollapse.training import TrainingDiverged, lr_at, lr_sweep, measurement_epochs, train

TINY = {"dataset": "digits", "per_class": 20, "model": "mlp", "width": 32, "depth": 2,
        "epochs": 8, "batch_size": 32, "lr": 0.05, "num_measurements": 8,
        "snapshot_per_class": 3, "device": "cpu", "seed": 0, "weight_decay": 5e-4}
SNAPSHOT_KEYS = {"features", "labels", "means", "global_mean", "weight", "bias", "epoch", "nc1"}


def tiny(**over):
    return load_config(overrides={**TINY, **over})


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = tiny()
    train(cfg, out=out, progress=False)
    return cfg, out


# ------------------------------------------------------------------------- schedule and epochs


def test_step_schedule_divides_by_ten_at_thirds():
    cfg = load_config(overrides={"lr": 0.3, "epochs": 350, "schedule": "step"})
    # 350/3 = 116.67 and 700/3 = 233.33: the drops apply from epochs 117 and 234.
    assert lr_at(cfg, 1) == 0.3 and lr_at(cfg, 116) == 0.3
    assert math.isclose(lr_at(cfg, 117), 0.03) and math.isclose(lr_at(cfg, 233), 0.03)
    assert math.isclose(lr_at(cfg, 234), 0.003) and math.isclose(lr_at(cfg, 350), 0.003)


def test_cosine_and_constant_schedules():
    cfg = load_config(overrides={"lr": 0.2, "epochs": 10, "schedule": "cosine"})
    assert lr_at(cfg, 1) == 0.2
    assert math.isclose(lr_at(cfg, 6), 0.1)  # half way: cos(pi/2) = 0
    assert all(lr_at(cfg, e) > lr_at(cfg, e + 1) for e in range(1, 10))
    cfg = cfg.replace(schedule="constant")
    assert {lr_at(cfg, e) for e in range(1, 11)} == {0.2}


@pytest.mark.parametrize("epochs,num", [(350, 50), (300, 50), (8, 8), (20, 50), (1, 50),
                                        (1000, 10)])
def test_measurement_epochs_log_spaced_and_include_last(epochs, num):
    ep = measurement_epochs(epochs, num)
    assert ep == sorted(set(ep)) and ep[0] >= 1 and ep[-1] == epochs
    assert len(ep) >= min(num, epochs) and len(ep) <= min(num, epochs) + 1
    if epochs >= 10 * num:  # log spacing: gaps grow
        gaps = np.diff(ep)
        assert gaps[-1] > gaps[0]
    assert measurement_epochs(epochs, 0) == []


# ------------------------------------------------------------------------- the run directory


def test_run_directory_format(tiny_run):
    cfg, out = tiny_run
    for name in ("config.toml", "status.json", "metrics.jsonl", "metrics.csv", "epochs.jsonl",
                 "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert load_config(path=out / "config.toml") == cfg.resolved()
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == cfg.epochs
    assert status["epochs"] == cfg.epochs and status["message"] is None

    epochs = read_jsonl(out / "epochs.jsonl")
    assert [r["epoch"] for r in epochs] == list(range(1, cfg.epochs + 1))
    assert all(set(r) == {"epoch", "lr", "train_loss", "train_error", "time"} for r in epochs)
    zero = [r["epoch"] for r in epochs if r["train_error"] == 0]
    assert status["tpt_onset_epoch"] == (zero[0] if zero else None)

    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == measurement_epochs(cfg.epochs, cfg.num_measurements)
    for r in rows:
        assert {"epoch", "step", "lr", "time", "train_loss", "train_error", "test_loss",
                "test_accuracy", "train", "test"} <= set(r)
        assert r["step"] == r["epoch"] * math.ceil(200 / cfg.batch_size)
        assert r["lr"] == lr_at(cfg, r["epoch"])
    with open(out / "metrics.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows)
    assert {"epoch", "train.nc1", "test.nc1", "train.ncc_mismatch"} <= set(table[0])
    assert [float(t["train.nc1"]) for t in table] == [r["train"]["nc1"] for r in rows]

    snaps = sorted((out / "snapshots").glob("epoch_*.npz"))
    assert [int(p.stem[6:]) for p in snaps] == [r["epoch"] for r in rows]
    with np.load(snaps[-1]) as z:
        assert set(z.files) == SNAPSHOT_KEYS
        assert z["features"].dtype == np.float32 and z["features"].shape == (30, 32)
        assert z["labels"].dtype == np.int64 and np.bincount(z["labels"]).tolist() == [3] * 10
        for key in ("means", "global_mean", "weight", "bias", "nc1"):
            assert z[key].dtype == np.float64
        assert z["means"].shape == (10, 32) and z["weight"].shape == (10, 32)
        assert int(z["epoch"]) == cfg.epochs and float(z["nc1"]) == rows[-1]["train"]["nc1"]


def _recompute(cfg, out):
    """Features/logits of the final checkpoint, computed here from scratch."""
    ckpt = safe_torch_load(out / "checkpoints" / "last.pt")
    tr = load_dataset("digits", split="train", per_class=cfg.per_class, seed=cfg.seed)
    te = load_dataset("digits", split="test", seed=cfg.seed)
    model = build_model("mlp", input_shape=tr.input_shape, num_classes=10, width=cfg.width,
                        depth=cfg.depth)
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        return model, [(model.features(d.inputs).double(), d.targets) for d in (tr, te)]


def test_final_metrics_match_independent_recomputation(tiny_run):
    cfg, out = tiny_run
    model, [(h_tr, y_tr), (h_te, y_te)] = _recompute(cfg, out)
    w = model.classifier.weight.detach().double()
    b = model.classifier.bias.detach().double()
    row = read_jsonl(out / "metrics.jsonl")[-1]
    ref_tr = measure(h_tr, y_tr, weight=w, bias=b, logits=h_tr @ w.T + b).to_dict()
    means = torch.stack([h_tr[y_tr == c].mean(0) for c in range(10)])
    ref_te = measure(h_te, y_te, weight=w, bias=b, logits=h_te @ w.T + b,
                     ncc_means=means).to_dict()
    for got, ref in ((row["train"], ref_tr), (row["test"], ref_te)):
        assert set(got) == set(ref)
        for k, v in ref.items():
            if v is None or isinstance(v, int):
                assert got[k] == v, k
            else:
                assert math.isclose(got[k], v, rel_tol=1e-5, abs_tol=1e-9), (k, got[k], v)
    logits = h_tr @ w.T + b
    assert row["train_error"] == float((logits.argmax(1) != y_tr).double().mean())
    ce = torch.nn.functional.cross_entropy(logits, y_tr).item()
    assert math.isclose(row["train_loss"], ce, rel_tol=1e-5)
    acc = float((h_te @ w.T + b).argmax(1).eq(y_te).double().mean())
    assert math.isclose(row["test_accuracy"], acc, rel_tol=1e-12)

    with np.load(out / "snapshots" / f"epoch_{cfg.epochs:05d}.npz") as z:
        np.testing.assert_allclose(z["means"], means.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["global_mean"], h_tr.mean(0).numpy(), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(z["features"], h_tr[torch.as_tensor(
            T._snapshot_indices(y_tr, 3, cfg.seed))].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(z["weight"], w.numpy())


def test_same_seed_same_history_other_seed_differs(tiny_run, tmp_path):
    cfg, out = tiny_run
    again = train(cfg, out=tmp_path / "again", progress=False)
    first = read_jsonl(out / "metrics.jsonl")
    assert without_time(read_jsonl(again / "metrics.jsonl")) == without_time(first)
    other = train(cfg.replace(seed=1), out=tmp_path / "other", progress=False)
    assert without_time(read_jsonl(other / "metrics.jsonl")) != without_time(first)


def test_refuses_to_overwrite_a_run(tiny_run):
    cfg, out = tiny_run
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        train(cfg, out=out, progress=False)


def test_resume_of_finished_run_changes_nothing(tiny_run):
    cfg, out = tiny_run
    before = (out / "metrics.jsonl").read_bytes()
    assert train(out=out, resume=True, progress=False) == out
    assert (out / "metrics.jsonl").read_bytes() == before
    with pytest.raises(ValueError, match="differs in: epochs"):
        train(cfg.replace(epochs=9), out=out, resume=True)


# ------------------------------------------------------------------------- divergence


def test_divergence_marks_failed_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = T.lr_at
    monkeypatch.setattr(T, "lr_at", lambda c, e: 1e12 if e >= 4 else real(c, e))
    out = tmp_path / "div"
    with pytest.raises(TrainingDiverged, match="diverged at epoch 4.*lower --lr"):
        train(tiny(checkpoint_every=1), out=out, progress=False)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["epoch"] == 3
    assert "diverged at epoch 4" in status["message"] and "checkpoint" in status["message"]
    ckpt = safe_torch_load(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_jsonl(out / "epochs.jsonl")] == [1, 2, 3]


def test_huge_lr_fails_with_clear_message(tmp_path):
    out = tmp_path / "huge"
    with pytest.raises(TrainingDiverged, match="NaN|nan|inf"):
        train(tiny(lr=1e12, epochs=3, num_measurements=3), out=out, progress=False)
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


# ------------------------------------------------------------------------- MSE, sweep, CLI


def test_mse_run_records_the_decomposition(tmp_path):
    from ncollapse.theory.central_path import mse_decomposition

    cfg = tiny(loss="mse", epochs=3, num_measurements=2, snapshot_per_class=0, lr=0.02)
    out = train(cfg, out=tmp_path / "mse", progress=False)
    row = read_jsonl(out / "metrics.jsonl")[-1]
    dec = row["mse_decomposition"]
    assert set(dec) == {"loss", "nc1", "nc2_3", "ls_perp"}
    assert math.isclose(dec["loss"], dec["nc1"] + dec["nc2_3"] + dec["ls_perp"], rel_tol=1e-9)
    model, [(h_tr, y_tr), _] = _recompute(cfg, out)
    ref = mse_decomposition(h_tr, y_tr, model.classifier.weight.detach(),
                            model.classifier.bias.detach(), lam=cfg.weight_decay)
    for k in dec:
        assert math.isclose(dec[k], ref[k], rel_tol=1e-5, abs_tol=1e-9), k
    assert not (out / "snapshots").exists() or not list((out / "snapshots").iterdir())


def test_lr_sweep_skips_diverged_and_picks_best(tmp_path):
    cfg = tiny(epochs=2, num_measurements=2)
    result = lr_sweep(cfg, out=tmp_path / "sweep", grid=[1e12, 0.01, 0.05], progress=False)
    diverged = [r["diverged"] for r in result["results"]]
    assert diverged == [True, False, False]
    ok = [r for r in result["results"] if not r["diverged"]]
    assert result["best"]["lr"] == min(ok, key=lambda r: r["train_loss"])["lr"]
    by_acc = lr_sweep(cfg, out=tmp_path / "sweep2", grid=[0.01, 0.05],
                      select="test_accuracy", progress=False)
    assert by_acc["best"]["test_accuracy"] == max(r["test_accuracy"]
                                                  for r in by_acc["results"])
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["select"] == "train_loss"
    with pytest.raises(ValueError, match="valid choices: train_loss, test_accuracy"):
        lr_sweep(cfg, out=tmp_path / "x", select="loss")
    assert len(paper_lr_grid()) == 25


def test_cli_train_prints_summary_and_resume_rules(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--dataset", "digits", "--per-class", "20", "--model", "mlp", "--width",
            "16", "--depth", "2", "--epochs", "3", "--batch-size", "50", "--lr", "0.05",
            "--seed", "3", "--device", "cpu", "--out", str(out), "--no-progress",
            "--num-measurements", "2", "--snapshot-per-class", "2", "--weight-decay", "1e-4",
            "--loss", "ce"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert f"run dir: {out}" in text and "TPT onset" in text and "NC1" in text
    cfg = load_config(path=out / "config.toml")
    assert (cfg.width, cfg.epochs, cfg.batch_size, cfg.seed, cfg.weight_decay) == \
        (16, 3, 50, 3, 1e-4)
    assert cli_main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert cli_main(["train", "--resume", str(out), "--lr", "0.1"]) == 2
    assert "--resume takes the config from the run dir (only --device and --epochs may " \
        "change); drop --lr" in capsys.readouterr().err


def test_cli_rejects_bad_values(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--schedule", "linear"])
    assert "invalid choice" in capsys.readouterr().err
    assert cli_main(["train", "--epochs", "0", "--out", "unused"]) == 2
    assert "epochs must be a positive integer" in capsys.readouterr().err


def _benchmark_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_times_the_same_training_three_ways():
    bench = _benchmark_module()
    threads = torch.get_num_threads()
    try:
        cfg = load_config("demo", overrides={"device": "cpu", "epochs": 3, "per_class": 20})
        result = bench.run_variants(cfg, repeats=2)
    finally:
        torch.set_num_threads(threads)
    for key in ("wall", "cpu"):
        for name in ("tracked", "untracked", "hand"):
            values = result[key][name]
            assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
    # like with like: the hand-written loop trains exactly what train() trains, and tracking
    # does not change the training (same final loss in every run)
    losses = [v for name in ("tracked", "untracked", "hand") for v in result["final_loss"][name]]
    assert all(math.isfinite(v) for v in losses)
    assert max(losses) - min(losses) <= 1e-9 * abs(losses[0])
    wall = result["wall"]
    o = bench.overheads(wall)
    assert o["tracking"] == min(wall["tracked"]) / min(wall["untracked"]) - 1
    assert o["framework"] == min(wall["untracked"]) / min(wall["hand"]) - 1


def test_benchmark_quick_prints_its_own_numbers(capsys, monkeypatch):
    bench = _benchmark_module()
    fixed = {"wall": {"tracked": [2.5], "untracked": [2.0], "hand": [1.6]},
             "cpu": {"tracked": [1.5], "untracked": [1.2], "hand": [1.0]},
             "final_loss": {"tracked": [0.1], "untracked": [0.1], "hand": [0.1]}}
    monkeypatch.setattr(bench, "run_variants", lambda cfg, repeats: fixed)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    for key in ("wall", "cpu"):
        o = bench.overheads(fixed[key])
        assert f"tracking overhead   {100 * o['tracking']:+6.1f} %" in text
        assert f"framework overhead  {100 * o['framework']:+6.1f} %" in text
    assert "train() with tracking            2.50 s" in text


def test_cli_lr_sweep(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["train", "--lr-sweep", "--lr-grid", "1e12,0.05", "--dataset", "digits",
            "--per-class", "10", "--model", "mlp", "--width", "12", "--depth", "1", "--epochs",
            "2", "--device", "cpu", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "lr 1e+12: diverged" in text and "best lr by train_loss: 0.05" in text
    assert json.loads((out / "sweep.json").read_text())["best"]["lr"] == 0.05


def test_imbalanced_mse_run_skips_the_decomposition_with_a_warning(tmp_path):
    cfg = tiny(loss="mse", epochs=2, num_measurements=1, snapshot_per_class=0, lr=0.02,
               imbalance="step", ratio=2.0)
    with pytest.warns(UserWarning, match="MSE decomposition not recorded"):
        out = train(cfg, out=tmp_path / "mse-imb", progress=False)
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 1 and "mse_decomposition" not in rows[0]
    assert read_jsonl(out / "epochs.jsonl")[0]["epoch"] == 1


def test_deterministic_flag_same_history_and_restored(tiny_run, tmp_path):
    cfg, out = tiny_run
    before = torch.are_deterministic_algorithms_enabled()
    det = train(cfg.replace(deterministic=True), out=tmp_path / "det", progress=False)
    assert torch.are_deterministic_algorithms_enabled() == before
    assert without_time(read_jsonl(det / "metrics.jsonl")) == \
        without_time(read_jsonl(out / "metrics.jsonl"))


def test_fixed_etf_classifier_stays_fixed_with_adam_cosine_label_smoothing(tmp_path):
    cfg = tiny(fixed_etf_classifier=True, optimizer="adam", lr=1e-3, schedule="cosine",
               loss="label-smoothing", epochs=3, num_measurements=2, snapshot_per_class=2)
    out = train(cfg, out=tmp_path / "etf", progress=False)
    snaps = sorted((out / "snapshots").glob("*.npz"))
    with np.load(snaps[0]) as first, np.load(snaps[-1]) as last:
        np.testing.assert_array_equal(first["weight"], last["weight"])
        w = last["weight"]
    gram = (w @ w.T) / np.linalg.norm(w, axis=1)[:, None] / np.linalg.norm(w, axis=1)[None]
    off = gram[~np.eye(10, dtype=bool)]
    np.testing.assert_allclose(off, -1 / 9, atol=1e-6)  # a simplex ETF: cosines -1/(C-1)
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert [r["lr"] for r in read_jsonl(out / "epochs.jsonl")] == \
        [lr_at(cfg, e) for e in (1, 2, 3)]


def test_config_toml_records_every_setting_model_defaults_included(tmp_path):
    from ncollapse.rundir import config_differences

    cfg = tiny(width=None, depth=None, batchnorm=None, epochs=1, num_measurements=1)
    out = train(cfg, out=tmp_path / "r", progress=False)
    saved = load_config(path=out / "config.toml")
    assert (saved.width, saved.depth, saved.batchnorm) == (512, 3, False)  # the MLP's defaults
    assert saved == cfg.resolved()  # the file reproduces the run's config exactly
    assert config_differences(cfg, cfg.replace(width=512, depth=3, batchnorm=False)) == []
    assert config_differences(cfg, cfg.replace(width=256)) == ["width"]
    # resuming with the defaults spelled out is the same run
    assert train(cfg.replace(width=512), out=out, resume=True, progress=False) == out
