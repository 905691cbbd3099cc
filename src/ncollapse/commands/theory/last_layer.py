"""``ncollapse theory last-layer``: train only the classifier on collapsed features [Pap20]."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from ncollapse.commands.theory import add_common_arguments
from ncollapse.metrics import measure
from ncollapse.theory import last_layer as ll
from ncollapse.theory.implicit_bias import collapsed_data

HELP = ("last layer on collapsed features: train only the classifier on a noisy rotated ETF; "
        "self-duality, NCC agreement and the Gaussian-channel error")


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``ncollapse theory last-layer``."""
    add_common_arguments(p, classes=5, per_class=20, dim=8)
    g = p.add_argument_group("last layer")
    g.add_argument("--noise", type=float, default=0.1,
                   help="feature noise σ of the reported solution (ETF norm 1)")
    g.add_argument("--no-bias", dest="bias", action="store_false",
                   help="train W only (no bias)")
    g.add_argument("--gd-steps", type=int, default=2000,
                   help="gradient-descent steps for the training-curve panel")
    g.add_argument("--mc-samples", type=int, default=20000,
                   help="Monte-Carlo channel samples per class and σ")
    g.add_argument("--sweep-points", type=int, default=10,
                   help="σ values (log-spaced in [1e-3, 1]) for the self-duality sweep")
    g.add_argument("--channel-points", type=int, default=9,
                   help="σ values (1/σ evenly spaced in [1, 5]) for the channel panel")


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Sweep σ, train the classifier, decode the channel; return the JSON result."""
    c, n, d = args.classes, args.per_class, args.dim
    lw, lb, bias = args.lambda_w, args.lambda_b, args.bias
    timings: dict[str, float] = {}

    def solve(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        h, y, means = collapsed_data(c, n, d, noise=sigma, seed=args.seed)
        return h, y, means, ll.train_classifier(h, y, c, lambda_w=lw, lambda_b=lb, bias=bias)

    start = time.perf_counter()
    h, y, means, sol = solve(args.noise)
    timings["solve_s"] = time.perf_counter() - start
    metrics = measure(h, y, weight=sol["weight"], bias=sol["bias"], num_classes=c)
    closed = ll.noiseless_solution(c, 1.0, lw)
    _, _, means0, sol0 = solve(0.0)
    a_fit = float(np.sum(sol0["weight"] * means0) / np.sum(means0 * means0))

    start = time.perf_counter()
    sigmas = np.geomspace(1e-3, 1.0, args.sweep_points)
    sweep: dict[str, Any] = {"sigma": sigmas.tolist(), "self_duality": [], "ncc_mismatch": [],
                             "num_classes": c, "dim": d, "per_class": n, "lambda_w": lw}
    for s in sigmas:
        hs, ys, _, ss = solve(float(s))
        m = measure(hs, ys, weight=ss["weight"], bias=ss["bias"], num_classes=c)
        sweep["self_duality"].append(m.self_duality)
        sweep["ncc_mismatch"].append(m.ncc_mismatch)
    timings["sweep_s"] = time.perf_counter() - start

    start = time.perf_counter()
    trajectories = []
    for s in (0.3, 0.1, 0.03, 0.01):
        hs, ys, _ = collapsed_data(c, n, d, noise=s, seed=args.seed)

        def track(w: np.ndarray, b: np.ndarray | None, hs: np.ndarray = hs,
                  ys: np.ndarray = ys) -> float:
            if not np.any(w):
                return float("nan")
            return measure(hs, ys, weight=w, num_classes=c).self_duality

        gd = ll.train_classifier(hs, ys, c, lambda_w=lw, lambda_b=lb, bias=bias, method="gd",
                              steps=args.gd_steps, num_records=30, track=track,
                              init_seed=args.seed)
        trajectories.append({"sigma": s, "steps": gd["record_steps"].tolist(),
                             "self_duality": gd["tracked"]})
    timings["gd_s"] = time.perf_counter() - start

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed + 7)
    ch_sigmas = 1.0 / np.linspace(1.0, 5.0, args.channel_points)
    channel: dict[str, Any] = {
        "sigma": ch_sigmas.tolist(),
        "exact": ll.channel_error_exact(c, ch_sigmas).tolist(),
        "union": ll.channel_error_union(c, ch_sigmas).tolist(),
        "orthogonal_exact": ll.channel_error_exact(c, ch_sigmas, distance=math.sqrt(2.0)).tolist(),
        "mc_ncc": [], "mc_classifier": [], "mc_mismatch": [], "mc_samples": [],
    }
    for s in ch_sigmas:
        hs, ys, mu = collapsed_data(c, n, d, noise=float(s), seed=args.seed)
        ts = ll.train_classifier(hs, ys, c, lambda_w=lw, lambda_b=lb, bias=bias)
        mc = ll.ncc_error_monte_carlo(mu, float(s), args.mc_samples, rng, weight=ts["weight"],
                                   bias=ts["bias"])
        channel["mc_ncc"].append(mc["ncc_error"])
        channel["mc_classifier"].append(mc["classifier_error"])
        channel["mc_mismatch"].append(mc["mismatch"])
        channel["mc_samples"].append(mc["samples"])
    mc_arr, ex = np.array(channel["mc_ncc"]), np.array(channel["exact"])
    z = (mc_arr - ex) / np.sqrt(ex * (1 - ex) / np.array(channel["mc_samples"]))
    channel["max_abs_z"] = float(np.max(np.abs(z)))
    timings["channel_s"] = time.perf_counter() - start

    summary = [
        f"last layer on a rotated ETF + noise: C={c}, n={n}, d={d}, λ_W={lw:g}, "
        f"λ_b={lb if bias else 'no bias'}",
        f"σ={args.noise:g}: objective {sol['objective']:.10f} (‖∇‖ {sol['grad_norm']:.1e}); "
        f"self_duality {metrics.self_duality:.3e}; ncc_mismatch {metrics.ncc_mismatch:.3g}; "
        f"accuracy {metrics.accuracy:.4f}",
        f"σ=0: solver objective {sol0['objective']:.12f}, closed form {closed['objective']:.12f}; "
        f"W = a·M with a = {a_fit:.10f} (closed form {closed['a']:.10f})",
        "self_duality vs σ: " + ", ".join(
            f"{s:.0e}: {v:.1e}" for s, v in zip(sigmas, sweep["self_duality"], strict=True)),
        f"channel: Monte Carlo NCC error vs exact formula, max |z| = {channel['max_abs_z']:.2f} "
        f"over {len(ch_sigmas)} σ; max NCC/classifier mismatch "
        f"{max(channel['mc_mismatch']):.2e}",
        "times: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()),
    ]
    figures = {}
    if not args.no_figures:
        from ncollapse.theory import figures as theory_figures  # matplotlib: only when drawing

        figures["theory-last-layer.png"] = theory_figures.last_layer_figure(sweep, trajectories,
                                                                            channel)
    return {
        "objective": sol["objective"],
        "closed_form_objective": closed["objective"] if args.noise == 0 else None,
        "metrics": metrics.to_dict(),
        "noiseless": {"objective": sol0["objective"], "closed_form_objective":
                      closed["objective"], "a": a_fit, "closed_form_a": closed["a"]},
        "self_duality_vs_sigma": sweep,
        "gd_trajectories": trajectories,
        "channel": channel,
        "timings": timings,
        "summary": summary,
        "figures": figures,
    }
