"""Collapse through depth: NC1 of every tracked layer against depth and against epoch.

The layer-wise measurements of a run (``ncollapse train --layers ...`` writes them as
``row["layers"][name]`` of each ``metrics.jsonl`` row, in the order of the forward pass) or
any mapping epoch -> {layer: metrics} (e.g. from :func:`ncollapse.collect.measure_model` with
``layers=``). Left: NC1 per layer against depth at a few epochs (log scale): a straight falling
line is the geometric decay with depth of He & Su (2023). Right: NC1 of each layer against epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ncollapse.plots.panels import STYLE, TPT_STYLE
from ncollapse.rundir import Run, load_run

__all__ = ["depth_figure", "depth_ratios", "depth_records", "layer_records"]

Records = Mapping[int, Mapping[str, Any]]


def _value(metrics: Any, key: str) -> float:
    v = metrics.get(key) if isinstance(metrics, Mapping) else getattr(metrics, key, None)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def layer_records(run: Run | str | Path) -> dict[int, dict[str, Any]]:
    """epoch -> {layer name: metrics dict} from a run's measurements (empty without layers)."""
    run = run if isinstance(run, Run) else load_run(run)
    out: dict[int, dict[str, Any]] = {}
    for row in run.metrics:
        layers, epoch = row.get("layers"), row.get("epoch")
        if isinstance(layers, Mapping) and layers and isinstance(epoch, int):
            out[epoch] = dict(layers)
    return out


def depth_records(records: Records, metric: str = "nc1"
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(layer names in depth order, epochs (E,), values (E, L)) of ``metric``; NaN where absent."""
    epochs = sorted(int(e) for e in records)
    names: list[str] = []
    for e in epochs:
        for name in records[e]:
            if name not in names:
                names.append(name)
    values = np.full((len(epochs), len(names)), math.nan)
    for i, e in enumerate(epochs):
        for j, name in enumerate(names):
            if name in records[e]:
                values[i, j] = _value(records[e][name], metric)
    return names, np.asarray(epochs, dtype=np.int64), values


def _pick_epochs(epochs: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` indices spread evenly on a log scale of the epochs, last included."""
    if len(epochs) <= count:
        return list(range(len(epochs)))
    pos = np.log1p(epochs.astype(np.float64))
    targets = np.linspace(pos[0], pos[-1], count)
    return sorted({int(np.abs(pos - t).argmin()) for t in targets})


def depth_figure(source: Run | str | Path | Records, *, metric: str = "nc1",
                 num_epochs: int = 6, title: str | None = None,
                 tpt_onset: int | None = None) -> Figure:
    """The two-panel figure of ``metric`` (default NC1) through depth; see the module doc.

    ``source``: a run (directory) trained with ``--layers``, or a mapping epoch -> {layer:
    NCMetrics or dict}. ValueError when it holds no layer-wise measurement.
    """
    if isinstance(source, (Run, str, Path)):
        run = source if isinstance(source, Run) else load_run(source)
        records: Records = layer_records(run)
        title = title or f"{run.name}: {metric} through depth"
        tpt_onset = run.tpt_onset if tpt_onset is None else tpt_onset
        if not records:
            raise ValueError(f"{run.name}: no layer-wise measurements; train with "
                             "'ncollapse train --layers PATTERN ...' to record them")
    else:
        records = source
        if not records:
            raise ValueError("no layer-wise measurements given")
    names, epochs, values = depth_records(records, metric)
    depth = np.arange(1, len(names) + 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(10.5, 4.2), layout="constrained")
        FigureCanvasAgg(fig)  # draw with Agg, never through pyplot or the global backend
        ax_d, ax_e = fig.subplots(1, 2)
        chosen = _pick_epochs(epochs, num_epochs)
        cmap = colormaps["viridis"]
        for k, i in enumerate(chosen):
            colour = cmap(k / max(1, len(chosen) - 1) * 0.9)
            y = values[i]
            ok = np.isfinite(y) & (y > 0)
            ax_d.plot(depth[ok], y[ok], marker="o", markersize=3.5, color=colour,
                      label=f"epoch {int(epochs[i])}")
        ax_d.set_yscale("log")
        ax_d.set_xticks(depth, names, rotation=35, ha="right")
        ax_d.set_xlabel("layer (forward order)")
        ax_d.set_ylabel(f"{metric} (log scale)")
        ax_d.set_title(f"{metric} against depth")
        ax_d.legend(loc="best", fontsize=7.5)
        lcmap = colormaps["plasma"]
        for j, name in enumerate(names):
            y = values[:, j]
            ok = np.isfinite(y) & (y > 0) & (epochs > 0)
            ax_e.plot(epochs[ok], y[ok], marker="o", markersize=2.5,
                      color=lcmap(j / max(1, len(names) - 1) * 0.85), label=name)
        if tpt_onset:
            ax_e.axvline(tpt_onset, color="0.3", linestyle=TPT_STYLE, linewidth=1.1,
                         label="TPT onset")
        ax_e.set_xscale("log")
        ax_e.set_yscale("log")
        ax_e.set_xlabel("epoch")
        ax_e.set_title(f"{metric} of each layer against epoch")
        ax_e.legend(loc="best", fontsize=7.5)
        fig.suptitle(title or f"{metric} through depth", fontsize=11)
    return fig


def depth_ratios(values: Sequence[float]) -> np.ndarray:
    """Ratios NC1(layer l+1) / NC1(layer l): constant ratios < 1 mean geometric decay."""
    v = np.asarray(values, dtype=np.float64)
    return v[1:] / v[:-1]
