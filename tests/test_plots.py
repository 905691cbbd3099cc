"""Run-directory reading (ncollapse.runs) and the paper figures (ncollapse.plots)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from _runfactory import make_run, measurement_epochs, nc_row, train_error_at
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ncollapse import plots
from ncollapse.runs import load_run, load_runs


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    make_run(base / "full", epochs=60, measurements=12, onset=15)
    make_run(base / "crashed", epochs=60, measurements=12, onset=10, crash_at=30,
             truncate_last_line=True, with_weights=False, seed=1, speed=0.7)
    make_run(base / "notest", epochs=40, measurements=8, with_test=False, seed=2)
    return base


# ----------------------------------------------------------------------------- runs.py


def test_load_run_reads_every_file(runs_dir):
    run = load_run(runs_dir / "full")
    expected = measurement_epochs(60, 12)
    assert [r["epoch"] for r in run.metrics] == expected
    assert run.state == "finished" and run.problems == []
    assert run.tpt_onset == 15 and run.last_epoch == 60 and run.total_epochs == 60
    assert sorted(run.snapshots) == expected
    assert len(run.epochs) == 60
    x, y = run.series("train.nc1")
    want = [nc_row(e, 4, scale=1.0, with_weights=True, num_samples=200, dim=12)["nc1"]
            for e in expected]
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_allclose(y, want, rtol=1e-15)
    ex, ey = run.series("train_error", source="epochs")
    np.testing.assert_array_equal(ey, [train_error_at(int(e), 15) for e in ex])


def test_crashed_run_keeps_what_exists_and_says_what_is_missing(runs_dir):
    run = load_run(runs_dir / "crashed")
    measured = [e for e in measurement_epochs(60, 12) if e <= 30]
    # the last row was cut in half by the "crash": it is dropped, the rest is kept
    assert [r["epoch"] for r in run.metrics] == measured[:-1]
    text = " ".join(run.problems)
    assert "truncated" in text and "failed at epoch 30 of 60" in text
    assert run.state == "failed"
    _, y = run.series("train.self_duality")
    assert np.isnan(y).all()


def test_status_missing_tpt_from_epochs(tmp_path):
    run_dir = make_run(tmp_path / "r", epochs=30, measurements=6, onset=9, snapshots=False)
    (run_dir / "status.json").unlink()
    run = load_run(run_dir)
    assert run.tpt_onset == 9  # first epoch of epochs.jsonl with zero training error
    assert run.state == "unknown"
    assert any("status.json is missing" in p for p in run.problems)
    assert any("snapshots/ is missing" in p for p in run.problems)


def test_csv_fallback_gives_the_same_values(tmp_path):
    a = make_run(tmp_path / "a", epochs=30, measurements=6, snapshots=False)
    b = make_run(tmp_path / "b", epochs=30, measurements=6, snapshots=False)
    (b / "metrics.jsonl").unlink()
    ra, rb = load_run(a), load_run(b)
    for key in ("train.nc1", "test.ncc_mismatch", "train_loss", "test_accuracy"):
        np.testing.assert_array_equal(ra.series(key)[0], rb.series(key)[0])
        np.testing.assert_allclose(ra.series(key)[1], rb.series(key)[1], rtol=1e-15)


def test_damaged_middle_line_and_config(tmp_path):
    run_dir = make_run(tmp_path / "r", epochs=30, measurements=6, snapshots=False)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[2] = "{not json"
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "config.toml").write_text("[run\nbroken")
    run = load_run(run_dir)
    assert len(run.metrics) == len(lines) - 1
    assert any("1 unreadable line(s) skipped (line 3)" in p for p in run.problems)
    assert run.config is None and any("config.toml is unreadable" in p for p in run.problems)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="one label per run"):
        load_runs([tmp_path / "x"], labels=["a", "b"])


def test_duplicate_names_are_made_unique(tmp_path):
    a = make_run(tmp_path / "a" / "run", epochs=10, measurements=3, snapshots=False)
    b = make_run(tmp_path / "b" / "run", epochs=10, measurements=3, snapshots=False)
    names = [r.name for r in load_runs([a, b])]
    assert names == ["a/run", "b/run"]


# ----------------------------------------------------------------------------- panels


def _axes() -> tuple[Figure, object]:
    fig = Figure(figsize=(4.8, 3.6))
    return fig, fig.add_subplot()


def test_panels_plot_the_recorded_values_on_log_axes(runs_dir):
    run = load_run(runs_dir / "full")
    for name, spec in plots.PANELS.items():
        fig, ax = _axes()
        notes = plots.plot_panel(ax, [run], name)
        assert ax.get_xscale() == "log", name
        assert ax.get_yscale() == ("log" if spec.log_y else "linear"), name
        lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
        assert len(lines) == len(spec.series), (name, notes)
        for line, series in zip(lines, spec.series, strict=True):
            x, y = run.series(series.key)
            if not np.isfinite(y).any():
                x, y = run.series(series.fallbacks[0])
            scale = 100.0 if spec.percent else 1.0
            keep = np.isfinite(y) & ((y > 0) if spec.log_y else True)
            np.testing.assert_allclose(line.get_xdata(), x[keep])
            np.testing.assert_allclose(line.get_ydata(), scale * y[keep], rtol=1e-14)
        # the TPT onset as a vertical line at epoch 15
        vlines = [ln for ln in ax.get_lines() if len(set(np.ravel(ln.get_xdata()))) == 1
                  and len(ln.get_xdata()) == 2]
        assert [float(v.get_xdata()[0]) for v in vlines] == [15.0], name


def test_missing_data_is_annotated(runs_dir):
    crashed = load_run(runs_dir / "crashed")
    fig, ax = _axes()
    notes = plots.plot_panel(ax, [crashed], "self_duality")
    assert notes == ["classifier weights not recorded"]
    texts = [t.get_text() for t in ax.texts]
    assert any("no data: classifier weights not recorded" in t for t in texts)

    fig, ax = _axes()
    notes = plots.plot_panel(ax, [crashed], "equinorm")  # means present, classifier rows absent
    assert notes == ["classifier rows: classifier weights not recorded"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("no data: classifier rows" in t for t in legend)

    notest = load_run(runs_dir / "notest")
    fig, ax = _axes()
    assert plots.plot_panel(ax, [notest], "test_accuracy") == ["no test set measured"]
    fig, ax = _axes()
    assert plots.plot_panel(ax, [notest], "ncc_mismatch") == ["test: no test set measured"]


def test_overlay_legend_names_every_run(runs_dir):
    fig = plots.panel_figure([runs_dir / "full", runs_dir / "crashed"], "nc1",
                             labels=["CE", "crashed run"])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "CE" in legend
    assert any(t.startswith("crashed run (failed at epoch 30 of 60") for t in legend)
    assert "TPT onset" in legend
    colours = {ln.get_color() for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) > 2}
    assert len(colours) == 2


def _overflow_inches(fig: Figure) -> float:
    """How far (inches) the drawn artists reach beyond the figure canvas; 0 when none do."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    tight = fig.get_tightbbox(canvas.get_renderer())  # inches, drawn artists only
    box = fig.bbox_inches
    return max(0.0, box.x0 - tight.x0, box.y0 - tight.y0, tight.x1 - box.x1,
               tight.y1 - box.y1)


@pytest.mark.parametrize("which", ["overview", "nc1", "self_duality", "equinorm"])
def test_nothing_is_clipped(runs_dir, which):
    runs = load_runs([runs_dir / "full", runs_dir / "crashed", runs_dir / "notest"])
    fig = (plots.overview_figure(runs) if which == "overview"
           else plots.panel_figure(runs, which))
    assert _overflow_inches(fig) < 0.01
    for ax in fig.axes:  # every title and axis label is there and non-empty
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_plot_runs_writes_valid_files(runs_dir, tmp_path):
    paths = plots.plot_runs([runs_dir / "full"], tmp_path / "figs", formats=("png",), dpi=100)
    assert [p.name for p in paths] == ["overview.png"] + [f"{n}.png" for n in plots.PANELS]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG"
            arr = np.asarray(im.convert("L"), dtype=float)
            assert arr.std() > 10  # not blank
            assert im.width >= 480 and im.height >= 360  # 4.8 x 3.6 in at 100 dpi


def test_svg_is_valid_and_reproducible(runs_dir):
    first = plots.figure_bytes(plots.panel_figure([runs_dir / "full"], "nc1"), "svg")
    again = plots.figure_bytes(plots.panel_figure([runs_dir / "full"], "nc1"), "svg")
    assert ET.fromstring(first).tag.endswith("svg")
    assert first == again  # no dates, fixed ids: byte-identical


def test_pdf_and_bad_format(runs_dir, tmp_path):
    fig = plots.panel_figure([runs_dir / "full"], "nc1")
    assert plots.figure_bytes(fig, "pdf").startswith(b"%PDF")
    with pytest.raises(ValueError, match="choose from png, svg, pdf"):
        plots.plot_runs([runs_dir / "full"], tmp_path, formats=("png", "jpg"))
    with pytest.raises(ValueError, match="unknown panel"):
        plots.panel_figure([runs_dir / "full"], "nc5")


def test_run_without_measurements_still_plots(tmp_path):
    run_dir = make_run(tmp_path / "r", epochs=20, measurements=5, crash_at=0, snapshots=False)
    (run_dir / "metrics.jsonl").write_text("")
    (run_dir / "metrics.csv").unlink()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed"
    fig = plots.overview_figure([run_dir])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(texts) == len(plots.PANELS)
    assert all("no measurements recorded (run failed at epoch 0 of 20)" in t.replace("\n", " ")
               for t in texts)


def test_cli_plot(runs_dir, tmp_path, capsys):
    from ncollapse.cli import main

    out = tmp_path / "cli"
    rc = main(["plot", str(runs_dir / "full"), str(runs_dir / "crashed"), "--out", str(out),
               "--format", "png", "--dpi", "60", "--label", "full", "crashed"])
    assert rc == 0
    assert (out / "overview.png").is_file() and (out / "ncc_mismatch.png").is_file()
    printed = capsys.readouterr().out
    assert "note: crashed:" in printed and f"wrote 10 files to {out}" in printed
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_importing_figures_keeps_the_users_backend():
    # A notebook user's backend must survive ``import ncollapse.plots``/``animation``/``report``;
    # pyplot (global figure state) is never imported either. A fresh interpreter, so that
    # earlier imports in this process cannot hide a switch.
    code = (
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "import ncollapse.plots, ncollapse.animation, ncollapse.report\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "False"]


def test_figures_render_without_pyplot(runs_dir):
    fig = plots.panel_figure([runs_dir / "full"], "nc1")
    assert isinstance(fig.canvas, FigureCanvasAgg)
    assert plots.figure_bytes(fig, "png")[:8] == b"\x89PNG\r\n\x1a\n"
