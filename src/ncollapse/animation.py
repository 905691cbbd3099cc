"""The ETF animation: features, class means and classifier rows converging to a simplex ETF.

For 3 chosen classes the picture is a triangle in the plane, for 4 a tetrahedron in 3-D
(rotating slowly). Every frame projects onto the subspace spanned by the chosen class means
(centred on their average), then rotates and rescales so that the means best match a fixed
reference simplex ETF of unit radius (orthogonal Procrustes, :func:`ncollapse.geometry.procrustes`):
the shape moves, not the norm that grows during training. Classifier rows are centred the same
way, projected onto the same plane/space, rotated alike and scaled to unit mean length.

:func:`run_frames` / :func:`ufm_frames` build :class:`Frame` objects, :func:`render_frame`
draws one (save it as a PNG to inspect), :func:`write_animation` writes the GIF (and MP4 when
ffmpeg is on PATH); :func:`animate_run` and :func:`animate_ufm` do all of it.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from ncollapse.geometry import canonical_etf, etf_distance, procrustes
from ncollapse.io import atomic_write_bytes
from ncollapse.metrics import measure
from ncollapse.rundir import Run, load_run, load_snapshot
from ncollapse.theory.ufm import gradient_descent_trajectory

__all__ = [
    "Frame",
    "animate_run",
    "animate_ufm",
    "choose_classes",
    "project_frame",
    "reference_etf",
    "render_frame",
    "run_frames",
    "ufm_frames",
    "write_animation",
]

CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf")
VIEW_LIMIT_2D = 1.75
VIEW_LIMIT_3D = 1.25
# 3-D viewpoint: from here through the next ~100 degrees of rotation no two vertices of the
# reference tetrahedron come closer than 0.56 (of 1.63) on screen
VIEW_ELEV = 25.0
VIEW_AZIM = -20.0
FRAME_SIZE_IN = 5.4
FRAME_DPI = 90


@dataclass(frozen=True)
class Frame:
    """One picture, in the coordinates of the reference ETF (vertices at unit distance).

    ``features`` (n, K−1) with ``labels`` (n,) holding positions 0..K−1 into ``class_ids``;
    ``means``, ``weights`` (or None) and ``etf`` are (K, K−1). ``etf_distance`` is
    :func:`ncollapse.geometry.etf_distance` of the chosen class means (0 for an exact ETF).
    """

    epoch: int
    nc1: float | None
    features: np.ndarray
    labels: np.ndarray
    means: np.ndarray
    weights: np.ndarray | None
    etf: np.ndarray
    class_ids: tuple[int, ...]
    etf_distance: float
    in_tpt: bool = False
    time_label: str = "epoch"
    class_names: tuple[str, ...] | None = None

    @property
    def dim(self) -> int:
        return int(self.etf.shape[1])


# ----------------------------------------------------------------------------- geometry


def choose_classes(num_classes: int, dim: int, classes: int | None = None,
                   class_ids: Sequence[int] | None = None) -> tuple[int, ...]:
    """Which classes to draw: ``class_ids`` as given, else the first ``classes`` (3 or 4).

    Without either: the first 4 classes when there are at least 4 and the feature dimension
    is at least 3, else the first 3.
    """
    if class_ids is not None:
        ids = tuple(int(c) for c in class_ids)
        if len(ids) not in (3, 4):
            raise ValueError(f"give 3 or 4 class ids (a triangle or a tetrahedron), got {ids}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"class ids must be distinct, got {ids}")
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"class ids {bad} out of range: the run has classes "
                             f"0..{num_classes - 1}")
        if classes is not None and classes != len(ids):
            raise ValueError(f"classes={classes} but {len(ids)} class ids given; give one")
    else:
        if classes is None:
            classes = 4 if num_classes >= 4 and dim >= 3 else 3
        if classes not in (3, 4):
            raise ValueError(f"classes must be 3 (triangle) or 4 (tetrahedron), got {classes}")
        if num_classes < classes:
            raise ValueError(f"the run has only {num_classes} classes; cannot draw {classes}")
        ids = tuple(range(classes))
    if dim < len(ids) - 1:
        raise ValueError(f"features of dimension {dim} cannot hold a {len(ids)}-class simplex "
                         f"(needs dimension >= {len(ids) - 1})")
    return ids


def reference_etf(num_classes: int) -> np.ndarray:
    """The fixed simplex ETF the frames are aligned to, oriented to read well on screen.

    3 classes: an upright triangle (a vertex at the top); 4: the tetrahedron on alternate
    corners of a cube, which shows its depth from the default 3-D viewpoint. Unit radius.
    """
    if num_classes == 3:
        angles = np.deg2rad([90.0, 210.0, 330.0])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if num_classes == 4:
        return np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)
    return canonical_etf(num_classes, num_classes - 1)


def project_frame(features: Any, labels: Any, means: Any, class_ids: Sequence[int], *,
                  weight: Any = None, epoch: int = 0, nc1: float | None = None,
                  in_tpt: bool = False, time_label: str = "epoch",
                  max_per_class: int | None = 40, class_names: Sequence[str] | None = None
                  ) -> Frame:
    """Project one snapshot onto the span of the chosen (centred) class means, ETF-aligned.

    ``features`` (S, d), ``labels`` (S,), ``means`` (C, d) (class means of the full training
    set), ``weight`` (C, d) or None. Only samples of the chosen classes are kept, at most
    ``max_per_class`` each (the first ones, so the subset is the same in every frame).
    """
    ids = list(class_ids)
    k = len(ids)
    feats = np.asarray(features, dtype=np.float64)
    labs = np.asarray(labels).astype(np.int64)
    mu = np.asarray(means, dtype=np.float64)[ids]
    centre = mu.mean(axis=0)
    mc = mu - centre
    _, s, vt = np.linalg.svd(mc, full_matrices=False)
    if s[0] <= 0 or not np.isfinite(s).all():
        raise ValueError(f"{time_label} {epoch}: the chosen class means coincide; "
                         "nothing to project onto")
    basis = vt[: k - 1].T  # (d, K−1): the span of the centred means
    etf = reference_etf(k)
    fit = procrustes(mc @ basis, etf)
    to_view = basis @ fit.rotation * fit.scale  # (d, K−1)

    keep: list[int] = []
    for c in ids:
        idx = np.flatnonzero(labs == c)
        keep.extend(idx[:max_per_class] if max_per_class else idx)
    keep_arr = np.asarray(sorted(keep), dtype=np.int64)
    pos_of = {c: p for p, c in enumerate(ids)}
    view_feats = (feats[keep_arr] - centre) @ to_view
    view_labels = np.asarray([pos_of[int(c)] for c in labs[keep_arr]], dtype=np.int64)

    view_w = None
    if weight is not None:
        w = np.asarray(weight, dtype=np.float64)[ids]
        wc = (w - w.mean(axis=0)) @ basis @ fit.rotation
        rms = float(np.sqrt(np.mean(np.sum(wc * wc, axis=1))))
        view_w = wc / rms if rms > 0 else wc
    view_means = mc @ to_view
    distance = etf_distance(mu, center=True)
    return Frame(epoch=int(epoch), nc1=None if nc1 is None else float(nc1),
                 features=view_feats, labels=view_labels, means=view_means, weights=view_w,
                 etf=etf, class_ids=tuple(int(c) for c in ids), etf_distance=distance,
                 in_tpt=bool(in_tpt), time_label=time_label,
                 class_names=tuple(class_names) if class_names is not None else None)


def run_frames(run: str | Path | Run, *, classes: int | None = None,
               class_ids: Sequence[int] | None = None, max_per_class: int | None = 40,
               max_frames: int | None = 60) -> list[Frame]:
    """The frames of a run directory, one per snapshot (at most ``max_frames``, evenly thinned,
    always keeping the first and the last)."""
    run = run if isinstance(run, Run) else load_run(run)
    if not run.snapshots:
        reason = next((p for p in run.problems if "snapshots" in p), "no snapshots")
        raise ValueError(f"{run.path}: nothing to animate ({reason}); train with snapshots on")
    epochs = _thin(list(run.snapshots), max_frames)
    onset = run.tpt_onset
    frames: list[Frame] = []
    ids: tuple[int, ...] | None = None
    skipped: list[str] = []
    names = _class_names(run)
    for epoch in epochs:
        try:
            snap = load_snapshot(run.snapshots[epoch])
        except ValueError as exc:
            skipped.append(str(exc))
            continue
        if ids is None:
            ids = choose_classes(snap["means"].shape[0], snap["means"].shape[1], classes,
                                 class_ids)
        nc1 = float(snap["nc1"]) if "nc1" in snap else run.value(run.row_at(epoch), "train.nc1")
        frames.append(project_frame(
            snap["features"], snap["labels"], snap["means"], ids, weight=snap.get("weight"),
            epoch=int(snap.get("epoch", epoch)), nc1=nc1,
            in_tpt=onset is not None and epoch >= onset, max_per_class=max_per_class,
            class_names=[names[c] for c in ids] if names else None))
    if not frames:
        raise ValueError(f"{run.path}: no readable snapshot ({'; '.join(skipped)})")
    run.problems.extend(skipped)
    return frames


def ufm_frames(records: Sequence[Mapping[str, Any]], *, classes: int | None = None,
               class_ids: Sequence[int] | None = None, max_per_class: int | None = 40
               ) -> list[Frame]:
    """Frames from an unconstrained-features trajectory (dicts with step, features, labels,
    weight, bias), e.g. :func:`ncollapse.theory.ufm.gradient_descent_trajectory`."""
    frames: list[Frame] = []
    ids: tuple[int, ...] | None = None
    for rec in records:
        feats = np.asarray(rec["features"], dtype=np.float64)
        labels = np.asarray(rec["labels"]).astype(np.int64)
        num_classes = int(labels.max()) + 1
        means = np.stack([feats[labels == c].mean(axis=0) for c in range(num_classes)])
        if ids is None:
            ids = choose_classes(num_classes, feats.shape[1], classes, class_ids)
        try:
            nc1 = measure(feats, labels, weight=rec.get("weight"), bias=rec.get("bias")).nc1
        except ValueError:
            nc1 = None
        try:
            frames.append(project_frame(feats, labels, means, ids, weight=rec.get("weight"),
                                        epoch=int(rec["step"]), nc1=nc1, time_label="step",
                                        max_per_class=max_per_class))
        except ValueError:
            continue  # all means still at one point (the very first steps from a tiny init)
    if not frames:
        raise ValueError("no frame could be drawn: the class means never separated")
    return frames


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


# ----------------------------------------------------------------------------- writing


def write_animation(frames: Sequence[Frame], out: str | Path, *, fps: float = 6.0,
                    mp4: bool | None = None, hold_last: float = 1.5,
                    degrees_per_frame: float = 2.0, dpi: int = FRAME_DPI) -> list[Path]:
    """Write the frames as a looping GIF at ``out`` (and ``out`` with .mp4 when asked).

    ``mp4=None`` writes the MP4 exactly when ffmpeg is on PATH; ``True`` requires it. The last
    frame is shown ``hold_last`` seconds longer; 3-D views turn by ``degrees_per_frame``.
    Returns the written paths (GIF first).
    """
    if not frames:
        raise ValueError("no frames to write")
    if not (isinstance(fps, (int, float)) and 0 < fps <= 60):
        raise ValueError(f"fps must be a number in (0, 60], got {fps!r}")
    out = Path(out)
    if out.suffix.lower() != ".gif":
        raise ValueError(f"{out}: the animation is written as a GIF; give a path ending in .gif")
    ffmpeg = shutil.which("ffmpeg")
    if mp4 and ffmpeg is None:
        raise ValueError("MP4 output needs ffmpeg on PATH (Debian: apt-get install ffmpeg); "
                         "drop --mp4 to write only the GIF")
    want_mp4 = bool(ffmpeg) if mp4 is None else bool(mp4)
    fig = Figure(figsize=(FRAME_SIZE_IN, FRAME_SIZE_IN), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    images: list[np.ndarray] = []
    for k, frame in enumerate(frames):
        render_frame(frame, fig=fig, azim=VIEW_AZIM + degrees_per_frame * k)
        canvas.draw()
        images.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    step_ms = 1000.0 / fps
    durations = [int(round(step_ms))] * len(images)
    durations[-1] = int(round(step_ms + 1000.0 * max(0.0, hold_last)))
    written = [_write_gif(images, out, durations)]
    if want_mp4 and ffmpeg:
        held = images + [images[-1]] * int(round(max(0.0, hold_last) * fps))
        written.append(_write_mp4(held, out.with_suffix(".mp4"), fps, ffmpeg))
    return written


def _write_gif(images: list[np.ndarray], out: Path, durations: list[int]) -> Path:
    # one palette per frame: Pillow's mapping onto a shared palette shifts colours (white
    # becomes 252), median cut per frame keeps the few flat colours of a plot exact
    pal = [Image.fromarray(im).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
           for im in images]
    buf = io.BytesIO()
    pal[0].save(buf, format="GIF", save_all=True, append_images=pal[1:],
                duration=durations, loop=0, optimize=False, disposal=1)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _write_mp4(images: list[np.ndarray], out: Path, fps: float, ffmpeg: str) -> Path:
    h, w = images[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2  # yuv420p needs even sizes
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".mp4", dir=out.parent)
    os.close(fd)
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w2}x{h2}", "-r", f"{fps:g}", "-i", "-", "-an", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-movflags", "+faststart", tmp]
    data = b"".join(np.ascontiguousarray(im[:h2, :w2]).tobytes() for im in images)
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
        if proc.returncode != 0:  # no libx264 in this ffmpeg build: plain MPEG-4 instead
            cmd[cmd.index("libx264")] = "mpeg4"
            proc = subprocess.run(cmd, input=data, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed: {proc.stderr.decode(errors='replace')[-500:]}")
        atomic_write_bytes(out, Path(tmp).read_bytes())  # usual permissions, atomic
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def animate_run(run_dir: str | Path | Run, out: str | Path | None = None,
                classes: int | None = None, *, class_ids: Sequence[int] | None = None,
                fps: float = 6.0,
                mp4: bool | None = None, max_per_class: int | None = 40,
                max_frames: int | None = 60) -> list[Path]:
    """Animate a run directory's snapshots; writes ``out`` (default RUN_DIR/animation.gif)."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    frames = run_frames(run, classes=classes, class_ids=class_ids, max_per_class=max_per_class,
                        max_frames=max_frames)
    out = Path(out) if out is not None else run.path / "animation.gif"
    return write_animation(frames, out, fps=fps, mp4=mp4)


def animate_ufm(out: str | Path, *, classes: int = 4, per_class: int = 15, dim: int = 6,
                loss: str = "ce", lambda_w: float = 5e-3, lambda_h: float = 5e-3,
                lambda_b: float = 5e-3, steps: int = 3000, lr: float = 0.5,
                num_records: int = 50, seed: int = 0, fps: float = 6.0,
                mp4: bool | None = None) -> list[Path]:
    """Animate plain gradient descent on the unconstrained features model (all ``classes``
    drawn, 3 or 4) from a small random start; returns the written paths."""
    if classes not in (3, 4):
        raise ValueError(f"classes must be 3 (triangle) or 4 (tetrahedron), got {classes}")
    records = gradient_descent_trajectory(
        classes=classes, per_class=per_class, dim=dim, loss=loss, lambda_w=lambda_w,
        lambda_h=lambda_h, lambda_b=lambda_b, bias=True, steps=steps, lr=lr,
        num_records=num_records, seed=seed)
    frames = ufm_frames(records, classes=classes)
    return write_animation(frames, out, fps=fps, mp4=mp4)


def _thin(items: list[int], limit: int | None) -> list[int]:
    if limit is None or len(items) <= limit:
        return items
    if limit < 2:
        raise ValueError(f"max_frames must be >= 2, got {limit}")
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
    return [items[i] for i in idx]


def _class_names(run: Run) -> list[str] | None:
    data = (run.config or {}).get("data", {})
    names = data.get("class_names") if isinstance(data, Mapping) else None
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    return None
