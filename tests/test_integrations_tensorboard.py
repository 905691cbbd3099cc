"""TensorBoard output with the real tensorboard package: ``ncollapse train --tensorboard DIR``
writes a scalar per metric, split and measurement (the numbers of metrics.jsonl) and the
overview figure as an image; optional imports name the extra to install."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("tensorboard", reason="needs the tensorboard extra (make setup installs it)")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from ncollapse.cli import main  # noqa: E402
from ncollapse.integrations._common import require  # noqa: E402
from ncollapse.rundir import load_run  # noqa: E402

TINY = ["--dataset", "digits", "--per-class", "20", "--model", "mlp", "--width", "32",
        "--depth", "2", "--epochs", "6", "--batch-size", "50", "--num-measurements", "3",
        "--snapshot-per-class", "3", "--no-progress"]


def test_train_tensorboard_writes_every_metric_and_the_overview(tmp_path, capsys):
    run_dir, tb_dir = tmp_path / "run", tmp_path / "tb"
    assert main(["train", *TINY, "--out", str(run_dir), "--tensorboard", str(tb_dir)]) == 0
    assert f"tensorboard: {tb_dir}" in capsys.readouterr().out

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    run = load_run(run_dir)
    assert len(run.metrics) == 3
    for split in ("train", "test"):
        for name, value in run.metrics[-1][split].items():
            if value is None or not math.isfinite(float(value)):
                continue
            series = events.Scalars(f"nc/{split}/{name}")
            assert [e.step for e in series] == [m["epoch"] for m in run.metrics]
            assert series[-1].value == pytest.approx(float(value), rel=1e-6, abs=1e-30), name
    assert [e.step for e in events.Scalars("epoch/train_loss")] == list(range(1, 7))
    assert tags["images"] == ["nc/overview"]
    image = events.Images("nc/overview")[-1]
    assert image.step == run.metrics[-1]["epoch"]
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.width > 300 and image.height > 200


def test_missing_optional_package_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'ncollapse\[lightning\]'"):
        require("ncollapse_no_such_package", "lightning", "ncollapse.integrations.lightning")


def test_train_passes_each_measurement_to_the_hook_while_running(tmp_path):
    """``train(on_measurement=...)`` (what ``--tensorboard`` uses) sees every measurement as it
    happens: the run is still running, and the row is the one written to metrics.jsonl."""
    from ncollapse.config import load_config
    from ncollapse.rundir import read_status
    from ncollapse.training import train

    run_dir = tmp_path / "run"
    cfg = load_config(overrides={"dataset": "digits", "per_class": 20, "model": "mlp",
                                 "width": 32, "depth": 2, "epochs": 6, "batch_size": 50,
                                 "num_measurements": 3, "snapshot_per_class": 3})
    seen = []

    def hook(epoch, row):
        seen.append((epoch, row["train"]["nc1"], row["train_loss"],
                     read_status(run_dir)["state"]))

    train(cfg, out=run_dir, progress=False, on_measurement=hook)
    rows = load_run(run_dir).metrics
    assert [s[0] for s in seen] == [r["epoch"] for r in rows]
    assert {s[3] for s in seen} == {"running"}
    for (_, nc1, loss, _), r in zip(seen, rows, strict=True):
        assert nc1 == pytest.approx(r["train"]["nc1"], rel=1e-12)
        assert loss == pytest.approx(r["train_loss"], rel=1e-12)
