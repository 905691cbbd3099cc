"""Paper figures: the collapse measures against epoch, in the style of Papyan, Han & Donoho (2020).

One panel per measure (training error and loss, test accuracy, NC1, equinorm, equiangularity,
maximal angle, self-duality, NCC mismatch), epochs on a log axis, the onset of the terminal
phase of training (TPT, first epoch with zero training error) as a dashed vertical line per
run. Several runs overlay in different colours. Missing data is drawn as far as it exists and
the panel says what is missing.

:func:`plot_panel` draws one panel (a name in ``PANELS``) on a given matplotlib Axes;
:func:`overview_figure` and :func:`panel_figure` build whole figures
(:func:`ncollapse.plots.plot_runs` writes them all to files). Figures are
``matplotlib.figure.Figure`` objects drawn by the Agg canvas: nothing here touches pyplot or
switches the user's matplotlib backend.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ncollapse.rundir import Run, load_runs

__all__ = [
    "PANELS",
    "STYLE",
    "Panel",
    "Series",
    "figure_bytes",
    "overview_figure",
    "panel_figure",
    "plot_panel",
]

FORMATS = ("png", "svg", "pdf")

# Publication style, applied inside ``matplotlib.rc_context`` only (global rcParams untouched).
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.fontsize": 7.5,
    "legend.framealpha": 0.85,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "lines.linewidth": 1.6,
    "lines.markersize": 3,
    "savefig.dpi": 150,
    "svg.fonttype": "path",
    "svg.hashsalt": "ncollapse",
    "pdf.fonttype": 42,
}

RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
               "#e377c2", "#7f7f7f", "#bcbd22")
SERIES_STYLES = ("-", "-.", ":")
SERIES_MARKERS = ("o", "s", "^")
TPT_STYLE = (0, (5, 3))


@dataclass(frozen=True)
class Series:
    """One line of a panel: a dotted metrics key, its legend text, and fallbacks."""

    key: str
    label: str
    fallbacks: tuple[str, ...] = ()
    epochs_source_ok: bool = False  # may fall back to epochs.jsonl when no measurements


@dataclass(frozen=True)
class Panel:
    """One measure against epoch."""

    name: str
    title: str
    ylabel: str
    series: tuple[Series, ...]
    log_y: bool = False
    percent: bool = False
    explanation: str = ""
    from_zero: bool = True  # linear y axes start at 0 (not for accuracy: it lives near 100 %)


PANELS: dict[str, Panel] = {p.name: p for p in (
    Panel("train_error", "Training error", "error (%)",
          (Series("train_error", "train", epochs_source_ok=True),), percent=True,
          explanation="Fraction of training samples the network misclassifies. The terminal "
                      "phase of training (TPT) begins at the first epoch where it reaches zero "
                      "(dashed vertical line); training continues well past that point."),
    Panel("train_loss", "Loss", "loss (log scale)",
          (Series("train_loss", "train", epochs_source_ok=True), Series("test_loss", "test")),
          log_y=True,
          explanation="The training loss keeps falling after the training error is zero: the "
                      "network keeps growing its margins. The test loss is shown for reference."),
    Panel("test_accuracy", "Test accuracy", "accuracy (%)",
          (Series("test_accuracy", "test", ("test.accuracy",)),), percent=True, from_zero=False,
          explanation="Accuracy on held-out data. In the paper it usually keeps improving "
                      "during the terminal phase, while the collapse below deepens."),
    Panel("nc1", "NC1: within-class variability", r"Tr$(\Sigma_W\Sigma_B^\dagger)/C$",
          (Series("train.nc1", "train"),), log_y=True,
          explanation="NC1: how spread out each class's features are around their class mean, "
                      "relative to how far apart the class means are. Zero means every sample "
                      "sits exactly on its class mean. Log scale: it falls by orders of "
                      "magnitude."),
    Panel("equinorm", "NC2: equinorm", "std / mean of norms",
          (Series("train.equinorm_means", "class means"),
           Series("train.equinorm_weights", "classifier rows")),
          explanation="NC2, equal lengths: the spread of the lengths of the centred class "
                      "means (and of the classifier's rows), divided by their average. Zero "
                      "means all classes are equally far from the centre."),
    Panel("equiangularity", "NC2: equiangularity", "std of pairwise cosines",
          (Series("train.equiangular_means", "class means"),
           Series("train.equiangular_weights", "classifier rows")),
          explanation="NC2, equal angles: the spread of the cosines between every pair of "
                      "centred class means (and of classifier rows). Zero means every pair "
                      "meets at the same angle."),
    Panel("maxangle", "NC2: maximal angle", r"mean $|\cos + 1/(C-1)|$",
          (Series("train.maxangle_means", "class means"),
           Series("train.maxangle_weights", "classifier rows")),
          explanation="NC2, largest possible angles: how far the pairwise cosines are from "
                      "-1/(C-1), the cosine of a simplex equiangular tight frame (ETF), the "
                      "most spread-out arrangement of C points. Zero means the means form a "
                      "simplex ETF."),
    Panel("self_duality", "NC3: self-duality",
          r"$\| W/\|W\|_F - \tilde M/\|\tilde M\|_F \|_F^2$",
          (Series("train.self_duality", "classifier vs means"),),
          explanation="NC3: the distance between the classifier's rows and the centred class "
                      "means after scaling both to unit size. Zero means the classifier vector "
                      "of each class points exactly at its class mean."),
    Panel("ncc_mismatch", "NC4: nearest class centre", "mismatch (%)",
          (Series("train.ncc_mismatch", "train"), Series("test.ncc_mismatch", "test")),
          percent=True,
          explanation="NC4: the share of samples where the network's decision differs from "
                      "simply picking the nearest class mean. Zero means the network has "
                      "become a nearest-class-centre classifier."),
)}

_WEIGHT_KEYS = ("weights", "self_duality", "ncc_mismatch", "bias_collapse")


# ----------------------------------------------------------------------------- panels


def plot_panel(ax: Axes, runs: Sequence[Run | str | Path], panel: str | Panel, *,
               legend: str = "full", colours: Sequence[str] | None = None) -> list[str]:
    """Draw one panel on ``ax`` for every run; returns the notes about missing data.

    ``legend``: ``"full"`` (runs, line styles, TPT onset), ``"styles"`` (line styles and TPT
    only, for figures with a shared run legend) or ``"none"``.
    """
    spec = PANELS[panel] if isinstance(panel, str) else panel
    if legend not in ("full", "styles", "none"):
        raise ValueError(f"legend must be 'full', 'styles' or 'none', got {legend!r}")
    run_list = load_runs(runs) if not all(isinstance(r, Run) for r in runs) else list(runs)
    colours = list(colours) if colours is not None else _colours(len(run_list))
    missing: list[tuple[str, str]] = []  # (which run/series, why)
    drawn_styles: set[int] = set()
    any_tpt = False
    x_all: list[float] = []  # epochs with data, plus TPT onsets and last epochs
    has_data = False
    for run, colour in zip(run_list, colours, strict=False):
        for k, series in enumerate(spec.series):
            x, y, reason = _series_data(run, series, spec.log_y)
            if reason is not None:
                where = [run.name] if len(run_list) > 1 else []
                where += [series.label] if len(spec.series) > 1 else []
                missing.append((" ".join(where), reason))
                continue
            scale = 100.0 if spec.percent else 1.0
            ax.plot(x, y * scale, color=colour, linestyle=SERIES_STYLES[k % 3],
                    marker=SERIES_MARKERS[k % 3], markersize=2.6, markeredgewidth=0,
                    label=f"{run.name} {series.label}")
            drawn_styles.add(k)
            has_data = True
            x_all.extend(x.tolist())
        onset = run.tpt_onset
        if onset is not None and onset > 0:
            ax.axvline(onset, color=colour, linestyle=TPT_STYLE, linewidth=1.1, alpha=0.8)
            any_tpt = True
            x_all.append(float(onset))
        if run.last_epoch:
            x_all.append(float(run.last_epoch))

    _format_axes(ax, spec, x_all, has_data)
    ax.set_title(spec.title)
    notes = _group_notes(missing)
    if not has_data and len({why for _, why in missing}) == 1:
        notes = [missing[0][1]]  # the same reason everywhere: say it once
    if not has_data:
        ax.text(0.5, 0.5, _wrap("no data: " + "; ".join(notes), 42),
                transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.35",
                bbox={"boxstyle": "round", "fc": "0.96", "ec": "0.7"})
    if legend != "none" and has_data:
        handles = _legend_handles(run_list, colours, spec, drawn_styles, any_tpt,
                                  with_runs=(legend == "full"))
        handles += [Line2D([], [], linestyle="none", label=_wrap("no data: " + note, 34))
                    for note in notes]
        if handles:
            leg = ax.legend(handles=handles, loc="best")
            for text in leg.get_texts()[len(handles) - len(notes):]:
                text.set_color("0.35")
                text.set_fontstyle("italic")
    return notes


# ----------------------------------------------------------------------------- figures


def overview_figure(runs: Sequence[Run | str | Path], *, labels: Sequence[str] | None = None,
                    title: str | None = None) -> Figure:
    """All panels in a 3×3 grid with one shared run legend."""
    run_list = _as_runs(runs, labels)
    colours = _colours(len(run_list))
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(12.5, 10.5), layout="constrained")
        FigureCanvasAgg(fig)  # draw with Agg, never through pyplot or the global backend
        axes = fig.subplots(3, 3)
        for ax, name in zip(axes.flat, PANELS, strict=True):
            plot_panel(ax, run_list, name, legend="styles", colours=colours)
        handles = [Line2D([], [], color=c, linewidth=2.2, label=_run_label(r))
                   for r, c in zip(run_list, colours, strict=False)]
        if any(r.tpt_onset is not None for r in run_list):
            handles.append(Line2D([], [], color="0.3", linestyle=TPT_STYLE, linewidth=1.1,
                                  label="TPT onset (first epoch with zero training error)"))
        fig.legend(handles=handles, loc="outside lower center",
                   ncol=min(len(handles), 4), fontsize=8.5, frameon=False)
        fig.suptitle(title or _default_title(run_list), fontsize=12)
    return fig


def panel_figure(runs: Sequence[Run | str | Path], panel: str, *,
                 labels: Sequence[str] | None = None) -> Figure:
    """One panel as its own figure (about 4.8 × 3.6 inches), with the full legend."""
    if panel not in PANELS:
        raise ValueError(f"unknown panel {panel!r}; choose one of {', '.join(PANELS)}")
    run_list = _as_runs(runs, labels)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(4.8, 3.6), layout="constrained")
        FigureCanvasAgg(fig)  # draw with Agg, never through pyplot or the global backend
        ax = fig.add_subplot()
        plot_panel(ax, run_list, panel, legend="full", colours=_colours(len(run_list)))
    return fig


def figure_bytes(fig: Figure, fmt: str = "png", *, dpi: int | None = None) -> bytes:
    """The figure encoded as ``fmt`` (png, svg or pdf), reproducibly (no timestamps)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    metadata = {"png": {"Software": None}, "svg": {"Date": None},
                "pdf": {"CreationDate": None, "ModDate": None}}[fmt]
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        # constrained layout keeps every artist inside the canvas (tested), so no second
        # "tight" drawing pass is needed
        fig.savefig(buf, format=fmt, dpi=dpi or STYLE["savefig.dpi"], metadata=metadata)
    return buf.getvalue()


# ----------------------------------------------------------------------------- internals


def _as_runs(runs: Sequence[Run | str | Path], labels: Sequence[str] | None) -> list[Run]:
    if isinstance(runs, (str, Path, Run)):
        runs = [runs]
    return load_runs(runs, labels)


def _colours(n: int) -> list[str]:
    return [RUN_COLOURS[k % len(RUN_COLOURS)] for k in range(n)]


def _run_label(run: Run) -> str:
    if run.state == "finished":
        return run.name
    return f"{run.name} ({run.describe_state().split(':')[0]})"


def _default_title(runs: list[Run]) -> str:
    if len(runs) == 1:
        run = runs[0]
        return f"Neural collapse in run '{run.name}' ({run.describe_state().split(':')[0]})"
    return f"Neural collapse in {len(runs)} runs"


def _series_data(run: Run, series: Series, log_y: bool
                 ) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Finite points of a series on the panel's axes, or a reason why there are none."""
    keys = (series.key, *series.fallbacks)
    x = y = np.empty(0)
    for key in keys:
        x, y = run.series(key)
        if np.isfinite(y).any():
            break
    else:
        if series.epochs_source_ok and run.epochs:
            x, y = run.series(series.key, source="epochs")
    keep = np.isfinite(y) & (x > 0)
    if log_y:
        keep &= y > 0
    if keep.any():
        return x[keep], y[keep], None
    return x[:0], y[:0], _missing_reason(run, series, keys, y, log_y)


def _missing_reason(run: Run, series: Series, keys: Sequence[str], y: np.ndarray,
                    log_y: bool) -> str:
    if not run.metrics and not (series.epochs_source_ok and run.epochs):
        state = run.describe_state().split(":")[0]
        return "no measurements recorded" + (f" (run {state})" if run.state != "finished"
                                             else "")
    key = keys[0]
    leaf = key.rsplit(".", 1)[-1]
    present = any(run.has_key(k) for k in keys)
    is_test = key.startswith("test")
    if is_test and not _has_test_data(run):
        return "no test set measured"
    if any(w in leaf for w in _WEIGHT_KEYS) and not np.isfinite(y).any():
        return "classifier weights not recorded"
    if is_test and not np.isfinite(y).any():
        return "no test set measured"
    if not present:
        return f"'{key}' not recorded in the metrics"
    if log_y and np.isfinite(y).any():
        return "every value is 0 or negative (cannot be shown on a log axis)"
    return f"'{key}' is empty in every measurement"


def _has_test_data(run: Run) -> bool:
    for key in ("test_accuracy", "test_loss", "test.accuracy", "test.nc1"):
        if np.isfinite(run.series(key)[1]).any():
            return True
    return False


def _format_axes(ax: Axes, spec: Panel, x_all: list[float], has_data: bool) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("epoch (log scale)")
    ax.set_ylabel(spec.ylabel)
    lo, hi = (min(x_all), max(x_all)) if x_all else (1.0, 100.0)
    if not has_data:
        lo = 1.0
    if hi <= lo:
        lo, hi = lo / 2, hi * 2
    ax.set_xlim(lo / 1.15, hi * 1.15)
    _nice_log_ticks(ax.xaxis, lo, hi)
    if not has_data:
        if spec.log_y:
            ax.set_yscale("log")
            ax.set_ylim(1e-3, 1)
        else:
            ax.set_ylim(0, 100 if spec.percent else 1)
    elif spec.log_y:
        ax.set_yscale("log")
        ax.grid(True, which="minor", axis="y", alpha=0.12)
        y_lo, y_hi = ax.get_ylim()
        _nice_log_ticks(ax.yaxis, y_lo, y_hi)
    elif spec.from_zero:
        ax.set_ylim(bottom=0)
    elif spec.percent:
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, min(hi, 100.0))
    if spec.percent and not spec.log_y:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.4g}%"))


def _nice_log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Plain numbers at 1-2-5 steps for short log ranges, powers of ten for long ones."""
    decades = math.log10(hi / lo) if lo > 0 else 10.0
    if decades < 2.2:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(_plain_tick))
    else:
        axis.set_major_locator(LogLocator(base=10, numticks=9))
        axis.set_major_formatter(FuncFormatter(_power_tick))
    axis.set_minor_formatter(NullFormatter())


def _plain_tick(value: float, _pos: int) -> str:
    if value <= 0:
        return ""
    if 1e-3 <= value < 1e5:
        return f"{value:g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return rf"${mantissa}\times10^{{{int(exponent)}}}$"


def _power_tick(value: float, _pos: int) -> str:
    if value <= 0:
        return ""
    exponent = math.log10(value)
    if abs(exponent - round(exponent)) > 1e-6:
        return ""
    if -2 <= round(exponent) <= 4:
        return f"{value:g}"
    return rf"$10^{{{int(round(exponent))}}}$"


def _legend_handles(runs: list[Run], colours: list[str], spec: Panel, drawn: set[int],
                    any_tpt: bool, *, with_runs: bool) -> list[Line2D]:
    handles: list[Line2D] = []
    single_style = len(spec.series) == 1
    if with_runs and (len(runs) > 1 or runs[0].state != "finished"):
        handles += [Line2D([], [], color=c, linewidth=2, label=_run_label(r))
                    for r, c in zip(runs, colours, strict=False)]
    if not single_style:
        grey = "0.25" if len(runs) > 1 else colours[0]
        handles += [Line2D([], [], color=grey, linestyle=SERIES_STYLES[k % 3],
                           marker=SERIES_MARKERS[k % 3], markersize=3, markeredgewidth=0,
                           label=s.label)
                    for k, s in enumerate(spec.series) if k in drawn]
    if any_tpt:
        handles.append(Line2D([], [], color="0.3" if len(runs) > 1 else colours[0],
                              linestyle=TPT_STYLE, linewidth=1.1, label="TPT onset"))
    return handles


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _group_notes(missing: list[tuple[str, str]]) -> list[str]:
    """``[(where, why)]`` -> one note per reason: ``"train, test: weights not recorded"``."""
    by_reason: dict[str, list[str]] = {}
    for where, why in missing:
        places = by_reason.setdefault(why, [])
        if where and where not in places:
            places.append(where)
    return [f"{', '.join(places)}: {why}" if places else why
            for why, places in by_reason.items()]
