"""Per-class figures of an imbalanced run (``ncollapse train --imbalance step|exp``).

From the run's snapshots (class means, global mean and classifier at every measurement):
the norms ‖μ_c − μ_G‖ of the centred class means and ‖w_c‖ of the classifier rows, one line
per class (minority classes dashed), and the mean pairwise cosine of the minority classifier
rows against epoch. Next to it, the prediction of the norm-constrained layer-peeled model
[Fang et al. 2021] for the same class proportions and, at each drawn epoch, the budgets the run
actually uses (E_W = mean ‖w_c‖², E_H = mean over classes of the class's mean ‖h‖² in the
snapshot): its minority rows become parallel (cosine → 1, "minority collapse") as the imbalance
grows. The model has free features, no bias and no ReLU, so it is a reference, not a fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ncollapse.data import imbalanced_counts
from ncollapse.plots.panels import STYLE, TPT_STYLE
from ncollapse.rundir import Run, load_run, load_snapshot
from ncollapse.theory.layer_peeled import LayerPeeledProblem, minority_cosine, solve

__all__ = ["imbalance_of", "layer_peeled_cosine", "minority_classes", "per_class_figure",
           "per_class_series"]


def imbalance_of(run: Run) -> tuple[str, float] | None:
    """(profile, ratio) of an imbalanced run from its config, None for a balanced one."""
    data = (run.config or {}).get("data", {})
    profile = data.get("imbalance") if isinstance(data, Mapping) else None
    if profile not in ("step", "exp"):
        return None
    ratio = data.get("ratio", 1.0)
    return str(profile), float(ratio) if isinstance(ratio, (int, float)) else 1.0


def minority_classes(counts: list[int]) -> list[int]:
    """The C − ⌊C/2⌋ classes with the fewest samples (for "step": the second half)."""
    order = sorted(range(len(counts)), key=lambda c: (counts[c], c))
    return sorted(order[: len(counts) - len(counts) // 2])


def per_class_series(run: Run) -> dict[str, Any]:
    """Per measured epoch (from the snapshots): epochs (E,), mean_norms (E, C), weight_norms
    (E, C), minority_cosine (E,), majority_cosine (E,), energy_w (E,), energy_h (E,), and
    minority (class indices), counts (class proportions as counts), dim (feature dimension)."""
    snaps = [(e, load_snapshot(p)) for e, p in sorted(run.snapshots.items())]
    snaps = [(e, s) for e, s in snaps if "weight" in s and "means" in s]
    if not snaps:
        raise ValueError(f"{run.name}: no snapshots with class means and classifier rows; "
                         "train with snapshots on (tracking.snapshot_per_class > 0)")
    c = int(snaps[0][1]["means"].shape[0])
    imb = imbalance_of(run)
    counts = imbalanced_counts(10**6, c, imb[0], imb[1]) if imb else [1] * c
    minority = minority_classes(counts)
    majority = [k for k in range(c) if k not in minority]
    out: dict[str, Any] = {"epochs": [], "mean_norms": [], "weight_norms": [],
                           "minority_cosine": [], "majority_cosine": [], "energy_w": [],
                           "energy_h": [], "minority": minority, "counts": counts,
                           "dim": int(snaps[0][1]["weight"].shape[1])}
    for epoch, s in snaps:
        mt = s["means"] - s["global_mean"][None, :]
        w = s["weight"]
        feats, labels = s["features"].astype(np.float64), s["labels"]
        sq = (feats * feats).sum(1)
        e_h = float(np.mean([sq[labels == k].mean() for k in range(c) if (labels == k).any()]))
        out["epochs"].append(int(epoch))
        out["mean_norms"].append(np.linalg.norm(mt, axis=1))
        out["weight_norms"].append(np.linalg.norm(w, axis=1))
        out["minority_cosine"].append(minority_cosine(w, minority) if len(minority) > 1
                                      else math.nan)
        out["majority_cosine"].append(minority_cosine(w, majority) if len(majority) > 1
                                      else math.nan)
        out["energy_w"].append(float((w * w).sum(1).mean()))
        out["energy_h"].append(e_h)
    for key in ("epochs", "mean_norms", "weight_norms", "minority_cosine", "majority_cosine",
                "energy_w", "energy_h"):
        out[key] = np.asarray(out[key])
    return out


def layer_peeled_cosine(counts: list[int], minority: list[int], dim: int, energy_w: float,
                        energy_h: float) -> float:
    """Mean pairwise cosine of the minority rows at the layer-peeled optimum (class-mean
    problem; the optimum does not depend on d once d ≥ 2C, so it is solved in min(d, 2C))."""
    problem = LayerPeeledProblem(counts=tuple(float(n) for n in counts),
                                 dim=int(min(dim, 2 * len(counts))),
                                 energy_w=float(energy_w), energy_h=float(energy_h))
    sol = solve(problem, per_sample=False, seeds=(0, 1), gtol=1e-9, max_iter=5000)
    return minority_cosine(sol.weight, minority)


def per_class_figure(source: Run | str | Path, *, predict: bool = True,
                     max_predictions: int = 6) -> Figure:
    """Three panels: mean norms and classifier-row norms per class, minority-row cosines with
    the layer-peeled prediction at up to ``max_predictions`` epochs (``predict=False``: none)."""
    run = source if isinstance(source, Run) else load_run(source)
    ser = per_class_series(run)
    epochs, minority = ser["epochs"], ser["minority"]
    c = ser["mean_norms"].shape[1]
    x = np.maximum(epochs, 1)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(12.5, 4.0), layout="constrained")
        FigureCanvasAgg(fig)  # draw with Agg, never through pyplot or the global backend
        ax_m, ax_w, ax_c = fig.subplots(1, 3)
        cmap = colormaps["tab10" if c <= 10 else "turbo"]
        for ax, key, title in ((ax_m, "mean_norms", "‖μ_c − μ_G‖ per class"),
                               (ax_w, "weight_norms", "‖w_c‖ per class")):
            for k in range(c):
                ax.plot(x, ser[key][:, k], color=cmap(k % 10 if c <= 10 else k / c),
                        linestyle="--" if k in minority else "-", linewidth=1.2,
                        label=f"class {k}" + (" (minority)" if k in minority else ""))
            ax.set_xscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(title)
        ax_m.legend(loc="best", fontsize=6.5, ncol=2)
        ax_c.plot(x, ser["minority_cosine"], marker="o", markersize=3, color="#d62728",
                  label="minority rows (measured)")
        ax_c.plot(x, ser["majority_cosine"], marker="s", markersize=3, color="#1f77b4",
                  label="majority rows (measured)")
        ax_c.axhline(-1.0 / (c - 1), color="0.5", linewidth=0.9, linestyle=":",
                     label="simplex ETF −1/(C−1)")
        if predict and len(minority) > 1:
            idx = np.unique(np.round(np.linspace(0, len(epochs) - 1,
                                                 min(max_predictions, len(epochs)))).astype(int))
            pred = [layer_peeled_cosine(ser["counts"], minority, ser["dim"], ser["energy_w"][i],
                                        ser["energy_h"][i]) for i in idx]
            ax_c.plot(x[idx], pred, linestyle="--", marker="D", markersize=4, color="0.15",
                      label="layer-peeled model, same budgets")
        if run.tpt_onset:
            ax_c.axvline(run.tpt_onset, color="0.3", linestyle=TPT_STYLE, linewidth=1.0)
        ax_c.set_xscale("log")
        ax_c.set_ylim(-1.05, 1.05)
        ax_c.set_xlabel("epoch")
        ax_c.set_title("mean pairwise cosine of classifier rows")
        ax_c.legend(loc="best", fontsize=7)
        imb = imbalance_of(run)
        what = f"{imb[0]} imbalance, R = {imb[1]:g}" if imb else "balanced"
        fig.suptitle(f"{run.name}: per-class norms and minority collapse ({what})", fontsize=11)
    return fig
