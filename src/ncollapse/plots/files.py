"""Writing every figure of one or more runs to files (``ncollapse plot``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ncollapse.io import atomic_write_bytes
from ncollapse.plots.classes import imbalance_of, per_class_figure
from ncollapse.plots.depth import depth_figure, layer_records
from ncollapse.plots.panels import (
    FORMATS,
    PANELS,
    _as_runs,
    figure_bytes,
    overview_figure,
    panel_figure,
)
from ncollapse.rundir import Run

__all__ = ["plot_runs"]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def plot_runs(run_dirs: Iterable[str | Path | Run], out_dir: str | Path,
              formats: Sequence[str] = ("png", "svg"), *, labels: Sequence[str] | None = None,
              dpi: int | None = None, per_class: bool = True) -> list[Path]:
    """Write ``overview.<fmt>`` and one ``<panel>.<fmt>`` per panel into ``out_dir``; and, per
    run, ``depth.<fmt>`` (runs trained with ``--layers``) and ``per_class.<fmt>`` (runs with
    ``--imbalance`` and snapshots; ``per_class=False`` skips it, it solves the layer-peeled
    model a few times) -- suffixed ``-<run name>`` when there are several runs.

    ``dpi`` applies to PNG (default 150). Returns the written paths (overview first).
    """
    formats = _check_formats(formats)
    run_list = _as_runs(list(run_dirs), labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = [("overview", overview_figure(run_list))]
    figures += [(name, panel_figure(run_list, name)) for name in PANELS]
    for run in run_list:
        suffix = "" if len(run_list) == 1 else f"-{_slug(run.name)}"
        if layer_records(run):
            figures.append((f"depth{suffix}", depth_figure(run)))
        if per_class and imbalance_of(run) and run.snapshots:
            figures.append((f"per_class{suffix}", per_class_figure(run)))
    for name, fig in figures:
        for fmt in formats:
            path = out_dir / f"{name}.{fmt}"
            atomic_write_bytes(path, figure_bytes(fig, fmt, dpi=dpi))
            written.append(path)
    return written


def _check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    out = tuple(f.lower().lstrip(".") for f in formats)
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise ValueError(f"unknown figure format(s) {', '.join(bad) or '(none)'}; "
                         f"choose from {', '.join(FORMATS)}")
    return out


