"""``ncollapse theory implicit-bias``: gradient descent vs the hard-margin SVM [Sou18]."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from ncollapse.commands.theory import add_common_arguments
from ncollapse.metrics import measure
from ncollapse.theory import implicit_bias as ib

HELP = ("implicit bias: gradient descent on logistic / cross-entropy loss vs the hard-margin SVM "
        "(binary and Crammer-Singer), and the classifier's self-duality along the way")


def _noises(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--regime-noises takes space-separated numbers like '0.01 0.3', got {text!r}"
        ) from exc


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``ncollapse theory implicit-bias``."""
    add_common_arguments(p, classes=4, per_class=10, dim=6, lambda_w=0.0, lambda_h=0.0,
                         lambda_b=0.0)
    g = p.add_argument_group("implicit bias")
    g.add_argument("--steps", type=int, default=100_000, help="gradient-descent steps")
    g.add_argument("--lr-scale", type=float, default=1.0,
                   help="step size η as a multiple of 1/β (β: smoothness); must be in (0, 2)")
    g.add_argument("--noise", type=float, default=0.3,
                   help="noise σ around the collapsed class means (multiclass problem)")
    g.add_argument("--binary-samples", type=int, default=40, help="points in the binary problem")
    g.add_argument("--regime-noises", type=_noises, default=_noises("0.01 0.3"),
                   help="noise levels σ at which the GD classifier's self-duality is followed "
                        "along t (default '0.01 0.3'; empty: skip)")


def _at(steps: np.ndarray, values: np.ndarray, t: float) -> tuple[int, float]:
    k = int(np.argmin(np.abs(np.log(np.maximum(steps, 1)) - np.log(t))))
    return int(steps[k]), float(values[k])


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Binary logistic and multiclass CE on collapsed data; self-duality in both regimes."""
    k, n, d = args.classes, args.per_class, args.dim
    timings: dict[str, float] = {}

    start = time.perf_counter()
    xb, yb = ib.separable_binary_data(args.binary_samples, d, seed=args.seed)
    svm_b = ib.hard_margin_svm(xb, yb)
    timings["svm_binary_s"] = time.perf_counter() - start
    start = time.perf_counter()
    xm, ym, _ = ib.collapsed_data(k, n, d, noise=args.noise, seed=args.seed)
    svm_m = ib.crammer_singer_svm(xm, ym, k)  # before the long GD runs: fails fast if inseparable
    timings["svm_multiclass_s"] = time.perf_counter() - start

    start = time.perf_counter()
    traj_b = ib.gd_logistic(xb, yb, steps=args.steps, lr_scale=args.lr_scale, progress=True)
    timings["gd_binary_s"] = time.perf_counter() - start
    fit_b = ib.fit_log_slopes(traj_b.steps, traj_b.weights, svm_b.weight)

    start = time.perf_counter()
    traj_m = ib.gd_cross_entropy(xm, ym, k, steps=args.steps, lr_scale=args.lr_scale,
                                 progress=True)
    timings["gd_multiclass_s"] = time.perf_counter() - start
    fit_m = ib.fit_log_slopes(traj_m.steps, traj_m.weights, svm_m.weight)

    metrics = measure(xm, ym, weight=svm_m.weight, num_classes=k)
    gd_metrics = measure(xm, ym, weight=traj_m.weights[-1], num_classes=k)
    sweep = []
    for sigma in (0.3, 0.1, 0.03, 0.01, 0.0):
        xs_, ys_, _ = ib.collapsed_data(k, n, d, noise=sigma, seed=args.seed)
        w_ = ib.crammer_singer_svm(xs_, ys_, k).weight
        sweep.append((sigma, float(measure(xs_, ys_, weight=w_, num_classes=k).self_duality)))
    start = time.perf_counter()
    regimes = ib.noise_regimes(k, n, d, args.regime_noises, steps=args.steps,
                               lr_scale=args.lr_scale, seed=args.seed)
    timings["regimes_s"] = time.perf_counter() - start
    closed = None
    if args.noise == 0:
        # exactly collapsed on an ETF of norm 1: ŵ_k = (K−1)/K·μ_k, ½Σ‖ŵ_k‖² = (K−1)²/(2K)
        closed = (k - 1) ** 2 / (2.0 * k)

    def line(name: str, fit: dict[str, float], svm: ib.SVMResult) -> str:
        return (f"{name}: ‖w‖ slope in ln t {fit['norm_slope']:.4f} (theory ‖ŵ‖ = "
                f"{fit['norm_slope_expected']:.4f}); gap at t={args.steps:g}: "
                f"{fit['gap_last']:.4f}; "
                f"gap·ln t = {fit['gap_log_t_last']:.4f}, its slope in ln t "
                f"{fit['gap_log_slope']:+.4f}; SVM ½‖ŵ‖² = {svm.objective:.6f} "
                f"({svm.solver}{', polished' if svm.polished else ''})")

    summary = [
        f"implicit bias: {args.steps:g} GD steps, η = {args.lr_scale:g}/β",
        line(f"binary logistic (N={len(yb)}, d={d})", fit_b, svm_b),
        line(f"multiclass CE on collapsed features (K={k}, n={n}, σ={args.noise:g})", fit_m,
             svm_m),
        f"SVM classifier vs class means: self_duality = {metrics.self_duality:.3e}; "
        f"GD classifier at the end: self_duality = {gd_metrics.self_duality:.3e}",
        "SVM self_duality vs noise σ: " + ", ".join(f"σ={a:g}: {b:.2e}" for a, b in sweep),
    ]
    for reg in regimes:
        t1, v1 = _at(reg["steps"], reg["self_duality"], 100)
        t2, v2 = float(reg["steps"][-1]), float(reg["self_duality"][-1])
        which = ("σ → 0 regime: the SVM limit is self-dual up to O(σ²), so GD stays close "
                 "to the means" if reg["svm_self_duality"] < 1e-2 else
                 "noisy regime: GD starts along the class means and moves AWAY from them, "
                 "towards the SVM")
        summary.append(f"self-duality of GD, σ={reg['noise']:g}: t=1: "
                       f"{reg['self_duality'][1]:.2g}, t={t1}: {v1:.3g}, t={t2:g}: {v2:.3g}, "
                       f"SVM limit {reg['svm_self_duality']:.3g} ({which})")
    summary.append("times: " + ", ".join(f"{key} {v:.2f}" for key, v in timings.items()))
    figures = {}
    if not args.no_figures:
        from ncollapse.theory import figures as theory_figures  # matplotlib: only when drawing

        curves = [
            {"label": "binary, logistic", "steps": traj_b.steps, "weights": traj_b.weights,
             "svm_weight": svm_b.weight},
            {"label": f"{k} classes, CE, collapsed+noise", "steps": traj_m.steps,
             "weights": traj_m.weights, "svm_weight": svm_m.weight},
        ]
        figures["theory-implicit-bias.png"] = theory_figures.implicit_bias_figure(curves,
                                                                                  regimes)
    return {
        "objective": svm_m.objective,
        "closed_form_objective": closed,
        "metrics": metrics.to_dict(),
        "gd_metrics": gd_metrics.to_dict(),
        "binary": {**fit_b, "svm_objective": svm_b.objective, "final_loss": traj_b.loss[-1],
                   "lr": traj_b.lr},
        "multiclass": {**fit_m, "svm_objective": svm_m.objective,
                       "final_loss": traj_m.loss[-1], "lr": traj_m.lr},
        "svm_self_duality_vs_noise": [{"noise": a, "self_duality": b} for a, b in sweep],
        "self_duality_regimes": [
            {"noise": r["noise"], "steps": r["steps"],
             "self_duality": [float(v) if np.isfinite(v) else None for v in r["self_duality"]],
             "svm_self_duality": r["svm_self_duality"], "gap_last": r["gap_last"]}
            for r in regimes],
        "timings": timings,
        "summary": summary,
        "figures": figures,
    }
