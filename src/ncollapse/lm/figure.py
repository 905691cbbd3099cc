"""The figure of ``ncollapse lm``: each collapse metric against training step (top row) and
against validation loss (bottom row, training runs from right to left)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

# (NCMetrics field(s), panel title); a panel is drawn when its first field was measured.
PANELS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("nc1",), "NC1  Tr(Σ_W Σ_B⁺)/C"),
    (("cdnv",), "CDNV (mean over pairs)"),
    (("hyperspherical_energy_means", "hyperspherical_energy_weights"),
     "hyperspherical energy"),
    (("uniform_duality",), "uniform duality (CV)"),
    (("ncc_mismatch",), "NC4  classifier ≠ NCC"),
)


def _present(rows: Sequence[dict[str, Any]], key: str) -> bool:
    return any(r["metrics"].get(key) is not None for r in rows)


def _yscale(values: Sequence[float]) -> str:
    """Log scale for positive values spanning more than a factor 30, symmetric log for
    values of both signs spanning as much (e.g. a ratio whose denominator passes near 0)."""
    mags = [abs(v) for v in values if v == v and v != 0.0]
    if len(mags) < 2 or max(mags) < 30.0 * min(mags):
        return "linear"
    return "log" if min(values) > 0 else "symlog"


def lm_figure(rows: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """A Figure from the result rows of :func:`ncollapse.lm.train.run_lm`."""
    panels = [p for p in PANELS if _present(rows, p[0][0])]
    ncol = len(panels) + 1
    fig = Figure(figsize=(3.1 * ncol, 6.0), layout="constrained")
    axes = fig.subplots(2, ncol, squeeze=False)
    steps = [r["step"] for r in rows]
    val = [r["val_loss"] for r in rows]

    ax = axes[0][0]
    ax.plot(steps, val, "o-", color="k", label="validation")
    tr = [(r["step"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    if tr:
        ax.plot(*zip(*tr, strict=True), "s--", color="0.5", label="training (last 20 steps)")
    ax.set(title="loss (nats / token)", xlabel="step")
    ax.legend(fontsize="small")
    ax = axes[1][0]
    acc = [r["metrics"].get("accuracy") for r in rows]
    ax.plot(val, acc, "o-", color="k")
    ax.set(title="accuracy on measured positions", xlabel="validation loss")
    ax.invert_xaxis()

    for j, (keys, name) in enumerate(panels, start=1):
        for key in keys:
            if not _present(rows, key):
                continue
            ys = [r["metrics"].get(key) for r in rows]
            label = key.rsplit("_", 1)[-1] if len(keys) > 1 else None
            axes[0][j].plot(steps, ys, "o-", label=label)
            axes[1][j].plot(val, ys, "o-", label=label)
        axes[0][j].set(title=name, xlabel="step")
        axes[1][j].set(title=name, xlabel="validation loss")
        axes[1][j].invert_xaxis()
        if len(keys) > 1:
            axes[0][j].legend(fontsize="small")
        values = [r["metrics"].get(k) for r in rows for k in keys]
        scale = _yscale([v for v in values if v is not None])
        for ax in (axes[0][j], axes[1][j]):
            ax.set_yscale(scale, **({"linthresh": 1.0} if scale == "symlog" else {}))
    if title:
        fig.suptitle(title)
    return fig
