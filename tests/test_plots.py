"""The paper figures (ncollapse.plots) of run directories written by ncollapse.RunWriter."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import write_run
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ncollapse import plots
from ncollapse.rundir import load_run, load_runs


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    write_run(base / "full", epochs=60, measurements=12, onset=15)
    write_run(base / "crashed", epochs=60, measurements=12, onset=10, crash_at=30,
              truncate_last_line=True, with_weights=False, seed=1)
    write_run(base / "notest", epochs=40, measurements=8, with_test=False, seed=2)
    return base


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
    run_dir = write_run(tmp_path / "r", epochs=20, measurements=5, crash_at=0,
                        snapshots=False).path
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


# ----------------------------------------------------------------------------- depth, classes


def _layer_run(path, names=("conv1", "block.0", "block.1", "fc")):
    from ncollapse.rundir import RunWriter

    epochs = [1, 2, 4, 8, 16, 32, 64]
    values = {}
    with RunWriter(path, {"model": {"name": "cnn"}}, epochs=64) as run:
        for e in epochs:
            # NC1 falls by 10x per layer and like 1/epoch: geometric decay with depth
            values[e] = {n: 10.0 ** (1 - k) / e for k, n in enumerate(names)}
            run.log_measurement(e, train={"nc1": 1.0 / e}, train_error=0.5 / e,
                                layers={n: {"nc1": v} for n, v in values[e].items()})
    return values


def test_depth_figure_draws_each_layer_in_forward_order(tmp_path):
    values = _layer_run(tmp_path / "layers")
    fig = plots.depth_figure(tmp_path / "layers", num_epochs=3)
    ax_d, ax_e = fig.axes
    assert [t.get_text() for t in ax_d.get_xticklabels()] == ["conv1", "block.0", "block.1",
                                                              "fc"]
    assert ax_d.get_yscale() == "log" and ax_e.get_xscale() == "log"
    drawn = {ln.get_label(): ln.get_ydata() for ln in ax_d.get_lines()}
    assert set(drawn) == {"epoch 1", "epoch 8", "epoch 64"}  # spread on a log scale
    for label, y in drawn.items():
        e = int(label.split()[1])
        np.testing.assert_allclose(y, list(values[e].values()), rtol=1e-12)
    per_layer = {ln.get_label(): ln.get_ydata() for ln in ax_e.get_lines()}
    np.testing.assert_allclose(per_layer["block.1"], [values[e]["block.1"] for e in values],
                               rtol=1e-12)
    # plot_runs writes it next to the panels; a run without layers gets none
    written = plots.plot_runs([tmp_path / "layers"], tmp_path / "fig", formats=["png"])
    assert tmp_path / "fig" / "depth.png" in written
    with pytest.raises(ValueError, match="--layers"):
        plots.depth_figure(_no_layers(tmp_path))


def _no_layers(tmp_path):
    from ncollapse.rundir import RunWriter

    with RunWriter(tmp_path / "plain", {"model": {"name": "mlp"}}, epochs=2) as run:
        run.log_measurement(1, train={"nc1": 1.0})
    return tmp_path / "plain"


def test_per_class_figure_of_an_imbalanced_run(tmp_path):
    from ncollapse.rundir import RunWriter

    rng = np.random.default_rng(0)
    c, d = 4, 6
    cfg = {"data": {"dataset": "gaussian", "imbalance": "step", "ratio": 10.0}}
    weights = {}
    with RunWriter(tmp_path / "imb", cfg, epochs=8) as run:
        for e in (1, 2, 4, 8):
            w = rng.standard_normal((c, d))
            w[3] = w[2] + 0.1 * e * rng.standard_normal(d)  # minority rows 2, 3
            weights[e] = w
            means = rng.standard_normal((c, d)) * e
            labels = np.repeat(np.arange(c), 5)
            feats = means[labels] + 0.1 * rng.standard_normal((labels.size, d))
            run.log_measurement(e, train={"nc1": 1.0}, snapshot={
                "features": feats, "labels": labels, "means": means,
                "global_mean": means.mean(0), "weight": w})
    fig = plots.per_class_figure(tmp_path / "imb", max_predictions=2)
    ax_m, ax_w, ax_c = fig.axes
    lines = {ln.get_label(): ln for ln in ax_c.get_lines()}
    measured = lines["minority rows (measured)"].get_ydata()
    for k, e in enumerate((1, 2, 4, 8)):
        u = weights[e][2:] / np.linalg.norm(weights[e][2:], axis=1, keepdims=True)
        assert measured[k] == pytest.approx(float(u[0] @ u[1]), rel=1e-9)
    norms = {ln.get_label(): ln.get_ydata() for ln in ax_w.get_lines()}
    np.testing.assert_allclose(norms["class 3 (minority)"],
                               [np.linalg.norm(weights[e][3]) for e in (1, 2, 4, 8)], rtol=1e-9)
    pred = lines["layer-peeled model, same budgets"].get_ydata()
    assert len(pred) == 2 and all(-1.0 <= p <= 1.0 for p in pred)
