"""Drawing one frame of the ETF animation: a triangle (3 classes) or a tetrahedron (4)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ncollapse.animation.frames import (
    CLASS_COLOURS,
    FRAME_DPI,
    FRAME_SIZE_IN,
    VIEW_AZIM,
    VIEW_ELEV,
    VIEW_LIMIT_2D,
    VIEW_LIMIT_3D,
    Frame,
)
from ncollapse.io import atomic_write_bytes

__all__ = ["render_frame"]


# ----------------------------------------------------------------------------- drawing


def render_frame(frame: Frame, *, fig: Figure | None = None, azim: float = VIEW_AZIM,
                 elev: float = VIEW_ELEV, out: str | Path | None = None, legend: bool = True,
                 subtitle: str | None = None) -> Figure:
    """Draw one frame (2-D triangle or 3-D tetrahedron) on ``fig`` (a new one if None).

    With ``out``, the figure is also saved there as a PNG.
    """
    if fig is None:
        fig = Figure(figsize=(FRAME_SIZE_IN, FRAME_SIZE_IN), dpi=FRAME_DPI)
        FigureCanvasAgg(fig)  # draw with Agg, never through pyplot or the global backend
    fig.clear()
    with matplotlib.rc_context({"font.family": "DejaVu Sans", "font.size": 9}):
        if frame.dim == 2:
            _draw_2d(fig, frame)
        elif frame.dim == 3:
            _draw_3d(fig, frame, azim=azim, elev=elev)
        else:
            raise ValueError(f"frames of {frame.dim + 1} classes cannot be drawn; use 3 or 4")
        _titles(fig, frame, subtitle)
        if legend:
            _legend(fig, frame)
        if out is not None:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=fig.dpi, metadata={"Software": None})
            atomic_write_bytes(out, buf.getvalue())
    return fig


def _class_colour(frame: Frame, pos: int) -> str:
    return CLASS_COLOURS[frame.class_ids[pos] % len(CLASS_COLOURS)]


def _draw_2d(fig: Figure, frame: Frame) -> None:
    ax = fig.add_axes((0.04, 0.145, 0.92, 0.74))
    lim = VIEW_LIMIT_2D
    e = frame.etf
    for i in range(3):
        for j in range(i + 1, 3):
            ax.plot(e[[i, j], 0], e[[i, j], 1], color="0.55", linestyle="--", linewidth=1.0,
                    zorder=1)
    ax.scatter(e[:, 0], e[:, 1], s=260, facecolors="none", edgecolors="0.45", linewidths=1.2,
               zorder=2)
    ax.plot([0], [0], marker="+", color="0.5", markersize=8, zorder=1)
    inside = np.all(np.abs(frame.features) <= lim, axis=1)
    for pos in range(3):
        colour = _class_colour(frame, pos)
        pts = frame.features[frame.labels == pos]
        ax.scatter(pts[:, 0], pts[:, 1], s=9, color=colour, alpha=0.55, linewidths=0,
                   zorder=3)
    for pos in range(3):
        colour = _class_colour(frame, pos)
        if frame.weights is not None:
            w = frame.weights[pos]
            ax.annotate("", xy=(w[0], w[1]), xytext=(0, 0), zorder=4,
                        arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 2.0,
                                    "mutation_scale": 14, "shrinkA": 0, "shrinkB": 0,
                                    "alpha": 0.9})
        m = frame.means[pos]
        ax.scatter([m[0]], [m[1]], s=150, color=colour, edgecolors="black", linewidths=1.2,
                   zorder=5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.8")
    _outside_note(ax, frame, int((~inside).sum()))


def _draw_3d(fig: Figure, frame: Frame, *, azim: float, elev: float) -> None:
    ax = fig.add_axes((0.0, 0.12, 1.0, 0.78), projection="3d")
    lim = VIEW_LIMIT_3D
    e = frame.etf
    for i in range(4):
        for j in range(i + 1, 4):
            ax.plot(e[[i, j], 0], e[[i, j], 1], e[[i, j], 2], color="0.55", linestyle="--",
                    linewidth=1.0)
    ax.scatter(e[:, 0], e[:, 1], e[:, 2], s=230, facecolors="none", edgecolors="0.45",
               linewidths=1.2, depthshade=False)
    inside = np.all(np.abs(frame.features) <= lim, axis=1)
    for pos in range(4):
        colour = _class_colour(frame, pos)
        pts = frame.features[(frame.labels == pos) & inside]
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=8, color=colour, alpha=0.55,
                   linewidths=0, depthshade=False)
    for pos in range(4):
        colour = _class_colour(frame, pos)
        if frame.weights is not None:
            w = frame.weights[pos]
            w = w * min(1.0, lim / max(float(np.abs(w).max()), 1e-300))  # keep inside the box
            ax.quiver(0, 0, 0, w[0], w[1], w[2], color=colour, linewidth=2.0,
                      arrow_length_ratio=0.18, alpha=0.95)
        m = frame.means[pos]
        ax.scatter([m[0]], [m[1]], [m[2]], s=140, color=colour, edgecolors="black",
                   linewidths=1.2, depthshade=False)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_zlim(-lim, lim)
    ax.set_box_aspect((1, 1, 1), zoom=1.15)
    ax.view_init(elev=elev, azim=azim)
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    ax.set_zticklabels([])
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.pane.set_alpha(0.04)
        axis._axinfo["grid"]["color"] = (0.85, 0.85, 0.85, 1.0)  # lighter grid
    _outside_note(ax, frame, int((~inside).sum()))


def _outside_note(ax: Any, frame: Frame, outside: int) -> None:
    if outside:
        text = f"{outside} of {len(frame.features)} features outside the view"
        if frame.dim == 2:  # between the square and the legend
            ax.figure.text(0.5, 0.118, text, ha="center", va="bottom", fontsize=7.5, color="0.4")
        else:  # top right, where the 3-D box leaves room
            ax.figure.text(0.97, 0.885, text, ha="right", va="top", fontsize=7.5, color="0.4")


def _titles(fig: Figure, frame: Frame, subtitle: str | None) -> None:
    nc1 = "n/a" if frame.nc1 is None else f"{frame.nc1:.3g}"
    tpt = "   (terminal phase)" if frame.in_tpt else ""
    fig.text(0.5, 0.965, f"{frame.time_label} {frame.epoch}    NC1 = {nc1}{tpt}",
             ha="center", va="top", fontsize=12, fontweight="bold")
    line = subtitle or (f"classes {', '.join(_names(frame))}   ·   distance of the means to "
                        f"the nearest ETF: {frame.etf_distance:.3f}")
    fig.text(0.5, 0.915, line, ha="center", va="top", fontsize=8.5, color="0.3")


def _names(frame: Frame) -> list[str]:
    if frame.class_names:
        return [str(n) for n in frame.class_names]
    return [str(c) for c in frame.class_ids]


def _legend(fig: Figure, frame: Frame) -> None:
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=9,
                      markerfacecolor=_class_colour(frame, p), markeredgecolor="black",
                      label=f"class {name} mean")
               for p, name in enumerate(_names(frame))]
    handles += [
        Line2D([], [], linestyle="none", marker="o", markersize=3.5, color="0.35",
               label="features (samples)"),
        Line2D([], [], color="0.35", linewidth=2.0, marker=">", markersize=6,
               label="classifier rows"),
        Line2D([], [], color="0.55", linestyle="--", marker="o", markerfacecolor="none",
               markeredgecolor="0.45", markersize=8, label="nearest simplex ETF"),
    ]
    if frame.weights is None:
        handles.pop(-2)
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7.5, frameon=False,
               bbox_to_anchor=(0.5, 0.0), handletextpad=0.4, columnspacing=1.0)
