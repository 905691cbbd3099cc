"""Figures of run directories, as ``matplotlib.figure.Figure`` objects drawn by the Agg canvas
(nothing here imports pyplot or switches the user's matplotlib backend).

Modules: ``panels`` (the paper's panels against epoch: :func:`plot_panel`,
:func:`overview_figure`, :func:`panel_figure`, :func:`figure_bytes`), ``depth`` (collapse
through depth of runs trained with ``--layers``: :func:`depth_figure`), ``classes`` (per-class
norms and minority collapse of imbalanced runs: :func:`per_class_figure`), ``files``
(:func:`plot_runs`, every figure to files).
"""

from ncollapse.plots.classes import per_class_figure
from ncollapse.plots.depth import depth_figure
from ncollapse.plots.files import plot_runs
from ncollapse.plots.panels import (
    FORMATS,
    PANELS,
    STYLE,
    Panel,
    Series,
    figure_bytes,
    overview_figure,
    panel_figure,
    plot_panel,
)

__all__ = ["FORMATS", "PANELS", "STYLE", "Panel", "Series", "depth_figure", "figure_bytes",
           "overview_figure", "panel_figure", "per_class_figure", "plot_panel", "plot_runs"]
