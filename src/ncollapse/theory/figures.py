"""Every figure of the theory lab, as ``matplotlib.figure.Figure`` objects (no pyplot state, no
backend switching): the caller saves them, e.g. with :func:`ncollapse.io.atomic_savefig`.

Each function draws results computed elsewhere (the solvers in :mod:`ncollapse.theory`); none
solves anything. :func:`read_mse_decomposition` reads the MSE decomposition of a training run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ncollapse.rundir import load_run
from ncollapse.theory.implicit_bias import direction_gap
from ncollapse.theory.ufm import ClosedForm, UFMProblem, UFMSolution, closed_form, with_lambda

__all__ = [
    "central_path_figure",
    "implicit_bias_figure",
    "last_layer_figure",
    "layer_peeled_figure",
    "mse_decomposition_figure",
    "read_mse_decomposition",
    "run_label",
    "ufm_figure",
]


def _nan(v: float | None) -> float:
    return np.nan if v is None else float(v)


def _grid(*axes: Any) -> None:
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)


# ---------------------------------------------------------------------------- UFM


def ufm_figure(problem: UFMProblem, solution: UFMSolution, cf: ClosedForm | None,
               trace: list[dict[str, Any]], sweep: list[dict[str, Any]], title: str) -> Figure:
    """Three panels: the solve (objective gap, gradient norm), collapse along the solve (from
    :func:`~ncollapse.theory.ufm.iterate_trace`), norms vs λ (the sweep against the closed form;
    for the gradient flow, ‖w_c‖² over time against its limit)."""
    p = problem
    flow = solution.times is not None
    fig = Figure(figsize=(13.5, 3.9), dpi=90, layout="tight")
    axes = fig.subplots(1, 3)
    f = np.array([r[0] for r in solution.history])
    g = np.array([r[1] for r in solution.history])
    ax = axes[0]
    if flow:
        t = np.asarray(solution.times)
        keep = t > 0
        ax.loglog(t[keep], np.maximum(f[keep], 1e-30), label="loss (closed form: 0)")
        ax.loglog(t[keep], g[keep], label="gradient norm")
        ax.set_xlabel("flow time t")
        ax.set_title("gradient flow from init scale 1e-8")
    else:
        it = np.arange(len(f))
        if cf is not None:
            ax.semilogy(it, np.maximum(f - cf.objective, 1e-16), label="objective − closed form")
        else:
            ax.semilogy(it, f, label="objective")
        ax.semilogy(it, g, label="gradient norm")
        ax.axhline(1e-8, color="0.6", ls=":", lw=1)
        ax.set_xlabel("L-BFGS iteration")
        ax.set_title(f"L-BFGS (best of {len(solution.seed_objectives)} seeds)")
    ax.legend(fontsize=8)

    ax = axes[1]
    x_key = "time" if flow else "iteration"
    xs = [r[x_key] for r in trace]
    if flow:
        keys = (("nc1", "NC1"), ("etf_error_weights", "ETF Gram error of W"),
                ("bias_error", "max |b − 1/C|"))
    elif p.loss == "ce" or p.bias:
        keys = (("nc1", "NC1"), ("etf_error_weights", "ETF Gram error of W"),
                ("self_duality", "NC3 self-duality"))
    else:
        keys = (("nc1", "NC1"), ("orthogonal_error_weights", "orthogonal-frame error of W"))
    for key, label in keys:
        vals = [np.nan if r.get(key) is None else max(r[key], 1e-30) for r in trace]
        if flow:
            ax.loglog(xs, vals, label=label)
        else:
            ax.semilogy(xs, vals, "o-", ms=3, label=label)
    ax.set_xlabel("flow time t" if flow else "L-BFGS iteration")
    ax.set_title("collapse along the solve")
    ax.legend(fontsize=8)

    ax = axes[2]
    if flow and cf is not None:
        ax.loglog(xs, [r["weight_sq_norm"] for r in trace], label="mean ‖w_c‖² (flow)")
        ax.axhline(cf.weight_sq_norm, color="k", ls="--", lw=1, label="closed form √n (C−1)/C")
        ax.set_xlabel("flow time t")
        ax.set_title("scale fixed by the balance WᵀW = HᵀH")
    elif sweep:
        lam = np.array([r["lambda"] for r in sweep])
        thr = 1.0 / (p.classes * math.sqrt(p.per_class)) if p.loss == "ce" else 1.0
        fine = np.unique(np.concatenate([np.geomspace(lam.min(), lam.max(), 300),
                                         thr * (1 - np.geomspace(1e-6, 0.5, 100))]))
        forms = [closed_form(with_lambda(p, x)) for x in fine]
        ok = np.array([c is not None for c in forms])
        cw = np.array([c.weight_sq_norm for c in forms if c is not None])
        ch = np.array([c.feature_sq_norm for c in forms if c is not None])
        ax.plot(fine[ok], cw, "C0-", lw=1.5, label="‖w_c‖² closed form")
        ax.plot(fine[ok], ch, "C1-", lw=1.5, label="‖h_i‖² closed form")
        ax.plot(lam, [r["weight_sq_norm"] for r in sweep], "C0o", ms=5, label="‖w_c‖² L-BFGS")
        ax.plot(lam, [r["feature_sq_norm"] for r in sweep], "C1s", ms=5, label="‖h_i‖² L-BFGS")
        ax.axvline(thr, color="0.4", ls=":", label="zero threshold")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("λ (= λ_W = λ_H" + (" = λ_b)" if p.bias else ")"))
        ax.set_title("norms vs weight decay")
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no closed form / no sweep", ha="center", va="center")
    if (flow and cf is not None) or sweep:
        ax.legend(fontsize=8)
    _grid(*axes)
    fig.suptitle(f"UFM — {title};  C={p.classes}, n={p.per_class}, d={p.dim}", fontsize=11)
    return fig


# ---------------------------------------------------------------------------- layer-peeled


def layer_peeled_figure(sweeps: dict[str, list[dict[str, Any]]], *, classes: int, majority: int,
                        dim: int, cosine_matrix: np.ndarray | None = None,
                        cosine_label: str = "",
                        thresholds: dict[str, dict[str, Any]] | None = None) -> Figure:
    """Minority cosine vs R (L-BFGS lines, SDP circles, bisected thresholds as shaded brackets),
    minority/majority norm ratio vs R, and the classifier cosine matrix at one R."""
    c = classes
    fig = Figure(figsize=(15, 4.3), dpi=90, layout="tight")
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.35, 1.0, 0.95]})
    for k, (key, rr) in enumerate(sweeps.items()):
        r = [x["ratio"] for x in rr]
        ew, eh = key.split(",")
        label = f"E_W = E_H = {ew}" if ew == eh else f"E_W, E_H = {key}"
        axes[0].semilogx(r, [_nan(x["minority_cosine"]) for x in rr], f"C{k}-", lw=1.8,
                         label=label)
        if rr and "sdp_minority_cosine" in rr[0]:
            axes[0].semilogx(r, [_nan(x["sdp_minority_cosine"]) for x in rr], f"C{k}o", ms=5,
                             mfc="none")
        axes[1].loglog(r, [max(x["minority_norm_ratio"], 1e-12) for x in rr], f"C{k}-", lw=1.8)
        th = (thresholds or {}).get(key)
        if th is not None and th.get("bracket") is not None:
            lo, hi = th["bracket"]
            axes[0].plot([math.sqrt(lo * hi)], [1.08], "v", color=f"C{k}", ms=8, mec="k",
                         mew=0.6)
        if th is not None and th.get("vanish_bracket") is not None:
            lo, hi = th["vanish_bracket"]
            axes[1].plot([math.sqrt(lo * hi)], [1e-11], "x", color=f"C{k}", ms=9, mew=2)
            axes[1].annotate(f"minority rows vanish (E = {ew})\ncosines undefined",
                             (math.sqrt(lo * hi), 1e-11), xytext=(12, 20),
                             textcoords="offset points", fontsize=8, color=f"C{k}")
    ax = axes[0]
    ax.plot([], [], "ko", mfc="none", label="convex SDP (Clarabel)")
    if thresholds:
        ax.plot([], [], "v", color="0.6", mec="k", mew=0.6,
                label="threshold (bisection: cos ≥ 1 − 1e-6)")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.axhline(-1.0 / (c - 1), color="0.5", lw=0.8, ls="--", label="ETF cosine −1/(C−1)")
    ax.set_xlabel("imbalance ratio R = n_A / n_B")
    ax.set_ylabel("mean cosine between minority classifiers")
    ax.set_title(f"minority collapse (C_A = {majority}, C_B = {c - majority}, d = {dim})")
    ax.set_ylim(-0.2, 1.62)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax = axes[1]
    ax.set_xlabel("imbalance ratio R")
    ax.set_ylabel("mean ‖w_minority‖ / mean ‖w_majority‖")
    ax.set_title("minority classifiers shrink")
    ax = axes[2]
    if cosine_matrix is not None:
        im = ax.imshow(cosine_matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.axhline(majority - 0.5, color="k", lw=0.8)
        ax.axvline(majority - 0.5, color="k", lw=0.8)
        ax.set_title(f"cos(w_c, w_c′) {cosine_label}")
        ax.set_xlabel("class: majority | minority")
    else:
        ax.set_axis_off()
    _grid(axes[0], axes[1])
    return fig


# ---------------------------------------------------------------------------- central path


def central_path_figure(flow: dict[str, Any]) -> Figure:
    """Two panels of :func:`~ncollapse.theory.central_path.renormalized_flow`: ω_j(t) (simulation
    vs ODE), and their spread, the distance to an ETF and the loss; log time axes."""
    t, om, ode = flow["time"], flow["omega"], flow["ode_omega"]
    keep = t > 0
    fig = Figure(figsize=(10.5, 4.0), dpi=100, layout="tight")
    axes = fig.subplots(1, 2)
    ax = axes[0]
    for j in range(om.shape[1]):
        ax.plot(t[keep], om[keep, j], "o", ms=3.5, color=f"C{j % 10}",
                label=f"ω_{j + 1} simulated")
        ax.plot(t[keep], ode[keep, j], "-", lw=1.2, color="k", alpha=0.6,
                label="ODE  dω/dt = ω / (N(C+ω²))" if j == om.shape[1] - 1 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("flow time t")
    ax.set_ylabel("SNR singular values ω_j")
    ax.set_title("SNR singular values grow without bound", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    spread = 1.0 - om[:, -1] / om[:, 0]
    ax.plot(t[keep], spread[keep], "o-", ms=3, color="C2", label="1 − ω_min/ω_max")
    ax.plot(t[keep], flow["etf_distance"][keep], "s-", ms=3, color="C3",
            label="whitened class means: distance to nearest ETF")
    ax.plot(t[keep], flow["loss"][keep], "^-", ms=3, color="C4",
            label="central-path loss ½Σ 1/(C+ω_j²)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("flow time t")
    ax.set_title("…and equalize: whitened class means → simplex ETF", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    _grid(*axes)
    c = om.shape[1] + 1
    n = flow["features"].shape[0]
    fig.suptitle(f"Renormalized gradient flow on the central path (C={c}, N={n}, λ=0)",
                 fontsize=11)
    return fig


def read_mse_decomposition(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Epochs and the four terms ``loss``, ``nc1``, ``nc2_3``, ``ls_perp`` of a run directory
    (read with :func:`ncollapse.rundir.load_run`).

    Rows without ``mse_decomposition`` (or with only an ``error`` entry, e.g. imbalanced
    classes) are skipped. Raises ValueError when no row has it (the run did not use the MSE
    loss), FileNotFoundError when RUN_DIR is not a run directory.
    """
    run = load_run(run_dir)
    keys = ("loss", "nc1", "nc2_3", "ls_perp")
    rows = [r for r in run.metrics if isinstance(r.get("mse_decomposition"), dict)
            and all(k in r["mse_decomposition"] for k in keys)]
    if not rows:
        raise ValueError(
            f"{run_dir}: no measurement has an 'mse_decomposition' entry: the decomposition is "
            "recorded only for runs trained with the MSE loss (train with --loss mse)"
        )
    out = {"epoch": np.array([float(r["epoch"]) for r in rows])}
    for key in keys:
        out[key] = np.array([
            np.nan if r["mse_decomposition"].get(key) is None
            else float(r["mse_decomposition"][key]) for r in rows
        ])
    return out


def _config_value(cfg: dict[str, Any], key: str) -> Any:
    """The plain (non-table) value of ``key`` in the parsed config.toml, at its top or in any
    of its tables (``[model] model = "mlp"``: "mlp"), else None."""
    value = cfg.get(key)
    if value is not None and not isinstance(value, dict):
        return value
    for table in cfg.values():
        if isinstance(table, dict):
            found = _config_value(table, key)
            if found is not None:
                return found
    return None


def run_label(run_dir: str | Path) -> str:
    """"dataset, model, optimizer lr …, weight decay …" from the run's config, else its name."""
    run = load_run(run_dir)
    cfg = run.config or {}
    dataset, model = _config_value(cfg, "dataset"), _config_value(cfg, "model")
    if dataset is None or model is None:
        return run.name

    def get(key: str) -> Any:
        value = _config_value(cfg, key)
        return "?" if value is None else value

    optimizer = _config_value(cfg, "optimizer") or ""
    return (f"{dataset}, {model}, {optimizer} lr {get('lr')}, "
            f"weight decay {get('weight_decay')}")


def mse_decomposition_figure(data: dict[str, np.ndarray], label: str) -> Figure:
    """L, L_NC1, L_NC2/3 and L_LS⊥ over the epochs (from :func:`read_mse_decomposition`)."""
    fig = Figure(figsize=(6.4, 4.2), dpi=110, layout="tight")
    ax = fig.subplots()
    styles = [("loss", "total loss L", "k", "-"), ("nc1", "L_NC1 (within-class)", "C0", "-"),
              ("nc2_3", "L_NC2/3 (W_LS·means + b_LS vs I)", "C1", "-"),
              ("ls_perp", "L_LS⊥ (off central path)", "C3", "--")]
    for key, name, color, ls in styles:
        vals = np.where(data[key] > 0, data[key], np.nan)
        ax.plot(data["epoch"], vals, ls, color=color, marker="o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss term (train set)")
    ax.set_title(f"MSE loss decomposition [Han et al. 2022]\n{label}", fontsize=10)
    ax.legend(fontsize=8)
    _grid(ax)
    return fig


# ---------------------------------------------------------------------------- implicit bias


def implicit_bias_figure(curves: list[dict[str, Any]],
                         regimes: list[dict[str, Any]] | None = None) -> Figure:
    """Direction gap, gap·ln t and ‖w(t)‖ (with the predicted ‖ŵ‖·ln t slope) vs log t; with
    ``regimes`` a fourth panel: self-duality of the GD classifier along t for several noise
    levels σ, each ending at its SVM's value.

    Each curve: ``label``, ``steps``, ``weights``, ``svm_weight``. Each regime: ``noise``,
    ``steps``, ``self_duality`` (along t), ``svm_self_duality``.
    """
    panels = 4 if regimes else 3
    fig = Figure(figsize=(4.4 * panels, 4.0), dpi=100, layout="tight")
    axes = fig.subplots(1, panels)
    for i, cur in enumerate(curves):
        t = np.asarray(cur["steps"], dtype=np.float64)
        keep = t >= 1
        t = t[keep]
        w = np.asarray(cur["weights"])[keep]
        gap = direction_gap(w, cur["svm_weight"])
        norm = np.linalg.norm(w.reshape(len(w), -1), axis=1)
        color = f"C{i}"
        axes[0].plot(t, gap, "-", color=color, lw=1.6, label=cur["label"])
        axes[1].plot(t, gap * np.log(np.maximum(t, 2)), "-", color=color, lw=1.6,
                     label=cur["label"])
        axes[2].plot(t, norm, "-", color=color, lw=1.6, label=f"{cur['label']}: ‖w(t)‖")
        slope = float(np.linalg.norm(cur["svm_weight"]))
        anchor = norm[-1] - slope * np.log(t[-1])
        tt = t[t >= t[-1] / 1e3]
        axes[2].plot(tt, anchor + slope * np.log(tt), "--", color="k", lw=1,
                     label="slope ‖ŵ_SVM‖ in ln t" if i == 0 else None)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("‖w/‖w‖ − ŵ/‖ŵ‖‖")
    axes[0].set_title("direction gap to the hard-margin SVM", fontsize=10)
    axes[1].set_xscale("log")
    axes[1].set_ylabel("gap · ln t")
    axes[1].set_title("gap · ln t (bounded ⇔ gap ~ 1/ln t)", fontsize=10)
    axes[2].set_xscale("log")
    axes[2].set_ylabel("‖w(t)‖")
    axes[2].set_title("‖w(t)‖ grows like ‖ŵ‖·ln t", fontsize=10)
    if regimes:
        ax = axes[3]
        for i, reg in enumerate(regimes):
            t = np.asarray(reg["steps"], dtype=np.float64)
            sd = np.asarray(reg["self_duality"], dtype=np.float64)
            keep = t >= 2  # at t = 1, W is exactly along the centred means (NC3 ≈ 1e-31)
            color = f"C{i + 2}"
            ax.plot(t[keep], np.maximum(sd[keep], 1e-30), "-", color=color, lw=1.6,
                    label=f"σ = {reg['noise']:g}: GD")
            ax.axhline(max(reg["svm_self_duality"], 1e-30), color=color, ls="--", lw=1,
                       label=f"σ = {reg['noise']:g}: SVM limit")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.text(0.03, 0.03, "t = 1: W(1) ∝ centred means (NC3 ≈ 0)", transform=ax.transAxes,
                fontsize=8)
        ax.set_ylabel("self-duality ‖W/‖W‖ − M̃/‖M̃‖‖²")
        ax.set_title("GD classifier vs class means:\n→ its SVM's value, not 0 unless σ → 0",
                     fontsize=10)
    for ax in axes:
        ax.set_xlabel("gradient-descent step t")
        ax.legend(fontsize=8)
    _grid(*axes)
    fig.suptitle("Implicit bias of gradient descent on separable data [Soudry et al. 2018]",
                 fontsize=11)
    return fig


# ---------------------------------------------------------------------------- last layer


def last_layer_figure(sweep: dict[str, Any], trajectories: list[dict[str, Any]],
                      channel: dict[str, Any]) -> Figure:
    """Three panels: self-duality vs σ, self-duality vs GD step, NCC error on the channel."""
    fig = Figure(figsize=(14.0, 4.2), dpi=100, layout="tight")
    axes = fig.subplots(1, 3)
    ax = axes[0]
    s = np.asarray(sweep["sigma"])
    sd = np.asarray(sweep["self_duality"])
    ax.loglog(s, sd, "o-", color="C0", label="self-duality of trained W")
    ref = sd[len(sd) // 2] * (s / s[len(s) // 2]) ** 2
    ax.loglog(s, ref, "--", color="gray", lw=1, label="∝ σ² (guide)")
    mis = np.asarray(sweep["ncc_mismatch"]) > 0
    if mis.any():
        ax.loglog(s[mis], sd[mis], "s", mfc="none", mec="C3", ms=10,
                  label="NCC ≠ classifier on some training samples")
    ax.set_xlabel("feature noise σ (ETF norm 1)")
    ax.set_ylabel("‖W/‖W‖ − M̃/‖M̃‖‖²")
    ax.set_title("converged classifier → the features' ETF as σ → 0", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    for i, tr in enumerate(trajectories):
        t = np.asarray(tr["steps"], dtype=float)
        keep = t >= 1
        ax.loglog(t[keep], np.asarray(tr["self_duality"])[keep], "-", color=f"C{i}",
                  label=f"σ = {tr['sigma']:g}")
    ax.set_xlabel("gradient-descent step (classifier only, random start)")
    ax.set_ylabel("self-duality")
    ax.set_title("during training: W aligns with the class means", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[2]
    snr = 1.0 / np.asarray(channel["sigma"])
    ax.semilogy(snr, channel["exact"], "-", color="C0", label="ETF + NCC: exact formula")
    ax.semilogy(snr, channel["union"], ":", color="C0", label="union bound (C−1)·Q(δ/2σ)")
    ax.semilogy(snr, channel["orthogonal_exact"], "-", color="gray", lw=1,
                label="orthogonal frame, same norms: exact")
    mc = np.asarray(channel["mc_ncc"])
    se = np.sqrt(np.maximum(mc * (1 - mc), 1e-300) / np.asarray(channel["mc_samples"]))
    ok = mc > 0
    ax.errorbar(snr[ok], mc[ok], yerr=2 * se[ok], fmt="o", ms=4, color="C1", capsize=2,
                label="Monte Carlo, NCC (±2 s.e.)")
    cl = np.asarray(channel["mc_classifier"])
    ax.semilogy(snr[cl > 0], cl[cl > 0], "x", color="C3", ms=6,
                label="Monte Carlo, trained W (σ_train = σ)")
    ax.set_xlabel("1/σ")
    ax.set_ylabel("decoding error probability")
    ax.set_title("Gaussian channel h = μ_y + σz", fontsize=10)
    ax.legend(fontsize=7.5)
    _grid(*axes)
    fig.suptitle(f"Training only the last layer on collapsed features (C={sweep['num_classes']}, "
                 f"d={sweep['dim']}, n={sweep['per_class']}/class, λ_W={sweep['lambda_w']:g})",
                 fontsize=11)
    return fig
