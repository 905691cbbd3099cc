"""Frames of the ETF animation: the chosen classes projected onto their class-mean subspace
and aligned with a fixed reference simplex ETF (Procrustes), from a run or a UFM trajectory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ncollapse.geometry import canonical_etf, etf_distance, procrustes
from ncollapse.metrics import class_means, measure
from ncollapse.rundir import Run, load_run, load_snapshot

__all__ = ["CLASS_COLOURS", "Frame", "choose_classes", "project_frame", "reference_etf",
           "run_frames", "ufm_frames"]

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
        except (ValueError, OSError) as exc:
            skipped.append(f"snapshot of epoch {epoch} skipped: {exc}")
            continue
        bad = [k for k in ("features", "means", "weight")
               if k in snap and not np.isfinite(snap[k]).all()]
        if bad:
            skipped.append(f"snapshot of epoch {epoch} skipped: its {', '.join(bad)} hold "
                           "NaN/Inf")
            continue
        if ids is None:
            ids = choose_classes(snap["means"].shape[0], snap["means"].shape[1], classes,
                                 class_ids)
        nc1 = float(snap["nc1"]) if "nc1" in snap else run.value(run.row_at(epoch), "train.nc1")
        try:
            frames.append(project_frame(
                snap["features"], snap["labels"], snap["means"], ids, weight=snap.get("weight"),
                epoch=int(snap.get("epoch", epoch)), nc1=nc1,
                in_tpt=onset is not None and epoch >= onset, max_per_class=max_per_class,
                class_names=[names[c] for c in ids] if names else None))
        except (ValueError, np.linalg.LinAlgError) as exc:
            skipped.append(f"snapshot of epoch {epoch} skipped: {exc}")
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
        means = class_means(feats, labels, num_classes)[0]
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
