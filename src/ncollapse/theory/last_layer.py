"""The last layer alone on collapsed features (Papyan, Han & Donoho 2020).

Features are fixed at h = μ_y + σz, with μ a randomly rotated simplex ETF of norm α and
z ~ N(0, I_d); only the classifier is trained, with cross-entropy and weight decay

    min_{W,b} (1/N)Σ CE(W h_i + b, y_i) + λ_W/2‖W‖² + λ_b/2‖b‖²     (float64, L-BFGS or GD).

At σ = 0 the minimiser is W = a*·M (rows μ_c), b = 0, with a* the root of a one-dimensional
equation (closed form below), so W is the same ETF as the features (self-duality 0); as σ → 0
the solution approaches it. Decoding: the nearest class mean (NCC) rule on a Gaussian channel
h = μ_y + σz with ETF means has the exact error probability

    P_err = ∫ φ(u)·[1 − Φ(√2·τ − u)^{C−1}] du,   τ = δ/(2σ),  δ = α·sqrt(2C/(C−1)),

(δ is the distance between two ETF vertices), bracketed by Q(τ) ≤ P_err ≤ (C−1)·Q(τ).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import log_ndtr, logsumexp, ndtr

__all__ = [
    "channel_error_exact",
    "channel_error_union",
    "classifier_objective",
    "etf_pairwise_distance",
    "ncc_error_monte_carlo",
    "noiseless_solution",
    "plot_last_layer",
    "train_classifier",
]

HELP = ("last layer on collapsed features: train only the classifier on a noisy rotated ETF; "
        "self-duality, NCC agreement and the Gaussian-channel error")


# ---------------------------------------------------------------------------- the objective


def classifier_objective(params: np.ndarray, features: np.ndarray, labels: np.ndarray,
                         num_classes: int, lambda_w: float, lambda_b: float, bias: bool
                         ) -> tuple[float, np.ndarray]:
    """(1/N)Σ CE(W h_i + b, y_i) + λ_W/2‖W‖² + λ_b/2‖b‖² and its gradient, params = [vec W, b]."""
    n, d = features.shape
    c = num_classes
    w = params[: c * d].reshape(c, d)
    b = params[c * d:] if bias else np.zeros(c)
    z = features @ w.T + b
    lse = logsumexp(z, axis=1)
    rows = np.arange(n)
    loss = float(np.mean(lse - z[rows, labels]))
    g = np.exp(z - lse[:, None])
    g[rows, labels] -= 1.0
    g /= n
    grad_w = g.T @ features + lambda_w * w
    value = loss + 0.5 * lambda_w * float(np.sum(w * w))
    parts = [grad_w.ravel()]
    if bias:
        value += 0.5 * lambda_b * float(b @ b)
        parts.append(g.sum(axis=0) + lambda_b * b)
    return value, np.concatenate(parts)


def _check_lambdas(lambda_w: float, lambda_b: float, bias: bool) -> None:
    if not lambda_w > 0:
        raise ValueError(
            f"lambda_w must be > 0, got {lambda_w}: without weight decay the separable CE "
            "problem has no minimiser (‖W‖ → ∞; see `ncollapse theory implicit-bias`)"
        )
    if bias and lambda_b < 0:
        raise ValueError(f"lambda_b must be >= 0, got {lambda_b}")


def train_classifier(features: Any, labels: Any, num_classes: int, *, lambda_w: float = 5e-3,
                     lambda_b: float = 5e-3, bias: bool = True, method: str = "lbfgs",
                     gtol: float = 1e-10, steps: int = 3000, num_records: int = 40,
                     track: Any = None, init_seed: int | None = None) -> dict[str, Any]:
    """Train only the classifier (W, b) on fixed features.

    Starts from W = 0, b = 0, or with ``init_seed`` from W_ij ~ N(0, 1/d), b = 0 (the
    objective is strongly convex, so the L-BFGS answer does not depend on the start).

    ``method="lbfgs"``: to ‖∇‖ < ``gtol`` (returns ``converged``, ``grad_norm``,
    ``iterations``). ``method="gd"``: ``steps`` of full-batch gradient descent with step
    1/β, β = λ_max(X̃ᵀX̃)/(2N) + λ (X̃ = [H, 1]), recording at log-spaced steps ``record_steps``
    the value of ``track(W, b)`` (if given) in ``tracked``.
    Returns ``weight`` (C, d), ``bias`` (C,) or None, ``objective``.
    """
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if h.ndim != 2 or y.shape != (h.shape[0],):
        raise ValueError(f"features must be (N, d) and labels (N,), got {h.shape}, {y.shape}")
    _check_lambdas(lambda_w, lambda_b, bias)
    c, d = num_classes, h.shape[1]
    size = c * d + (c if bias else 0)
    p0 = np.zeros(size)
    if init_seed is not None:
        p0[: c * d] = np.random.default_rng(init_seed).normal(size=c * d) / math.sqrt(d)

    def fun(p: np.ndarray) -> tuple[float, np.ndarray]:
        return classifier_objective(p, h, y, c, lambda_w, lambda_b, bias)

    def unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return p[: c * d].reshape(c, d).copy(), (p[c * d:].copy() if bias else None)

    if method == "lbfgs":
        from ncollapse.theory._solve import minimize_lbfgs

        res = minimize_lbfgs(fun, p0, gtol=gtol)
        w, b = unpack(res.x)
        return {"weight": w, "bias": b, "objective": res.fun, "grad_norm": res.grad_norm,
                "converged": res.converged, "iterations": res.iterations}
    if method != "gd":
        raise ValueError(f"method must be 'lbfgs' or 'gd', got {method!r}")
    xt = np.hstack([h, np.ones((h.shape[0], 1))]) if bias else h
    beta = float(np.linalg.norm(xt, 2) ** 2) / (2.0 * h.shape[0]) + max(lambda_w, lambda_b)
    eta = 1.0 / beta
    record = np.unique(np.concatenate([[0], np.geomspace(1, steps, num_records).astype(int)]))
    p = p0
    tracked = []
    j = 0
    for t in range(steps + 1):
        value, grad = fun(p)
        if t == record[j]:
            if track is not None:
                tracked.append(track(*unpack(p)))
            j += 1
        if t == steps:
            break
        p -= eta * grad
    w, b = unpack(p)
    return {"weight": w, "bias": b, "objective": value, "grad_norm": float(np.linalg.norm(grad)),
            "record_steps": record, "tracked": tracked, "lr": eta}


def noiseless_solution(num_classes: int, scale: float, lambda_w: float) -> dict[str, float]:
    """Closed form at σ = 0: W = a*·M, b = 0, with a* minimising
    f(a) = log(1 + (C−1)·exp(−κa)) + λ_W/2·C·α²·a²,  κ = α²·C/(C−1).

    a* is the root of f'(a) = −(C−1)κ/(exp(κa) + C−1) + λ_W·C·α²·a (found to machine
    precision by bracketing); returns ``a``, ``objective`` = f(a*), ``weight_norm`` = a*·α.
    """
    from scipy.optimize import brentq

    c, alpha = int(num_classes), float(scale)
    if not lambda_w > 0:
        raise ValueError(f"lambda_w must be > 0 for a minimiser to exist, got {lambda_w}")
    kappa = alpha**2 * c / (c - 1.0)

    def deriv(a: float) -> float:
        return -(c - 1.0) * kappa / (math.exp(min(kappa * a, 700.0)) + c - 1.0) \
            + lambda_w * c * alpha**2 * a

    hi = 1.0
    while deriv(hi) < 0:
        hi *= 2.0
    a = brentq(deriv, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    obj = math.log1p((c - 1.0) * math.exp(-kappa * a)) + 0.5 * lambda_w * c * alpha**2 * a**2
    return {"a": a, "objective": obj, "weight_norm": a * alpha}


# ---------------------------------------------------------------------------- Gaussian channel


def etf_pairwise_distance(num_classes: int, scale: float = 1.0) -> float:
    """Distance between two vertices of a simplex ETF of norm α: α·sqrt(2C/(C−1))."""
    return float(scale) * math.sqrt(2.0 * num_classes / (num_classes - 1.0))


def channel_error_exact(num_classes: int, sigma: float | np.ndarray, *, scale: float = 1.0,
                        distance: float | None = None) -> np.ndarray:
    """Exact NCC error probability on h = μ_y + σz for equal-norm means whose pairwise
    differences have equal length δ and correlation ½ (the simplex ETF; also the orthogonal
    frame, with δ = α√2): P = ∫ φ(u)[1 − Φ(√2τ − u)^{C−1}] du, τ = δ/(2σ).

    ``distance`` defaults to :func:`etf_pairwise_distance` (C, ``scale``).
    """
    from scipy.integrate import quad

    c = int(num_classes)
    delta = etf_pairwise_distance(c, scale) if distance is None else float(distance)
    sig = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    out = np.empty_like(sig)
    for i, s in enumerate(sig):
        tau = delta / (2.0 * s)

        def integrand(u: float, tau: float = tau) -> float:
            return math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi) * \
                -math.expm1((c - 1) * float(log_ndtr(math.sqrt(2.0) * tau - u)))

        centre = math.sqrt(2.0) * tau
        val = 0.0
        for lo, hi in ((-np.inf, centre - 8), (centre - 8, centre + 8), (centre + 8, np.inf)):
            val += quad(integrand, lo, hi, epsabs=0.0, epsrel=1e-12, limit=200)[0]
        out[i] = val
    return out


def channel_error_union(num_classes: int, sigma: float | np.ndarray, *, scale: float = 1.0
                        ) -> np.ndarray:
    """Union bound (C−1)·Q(δ/(2σ)) for the ETF (δ: :func:`etf_pairwise_distance`)."""
    delta = etf_pairwise_distance(num_classes, scale)
    return (num_classes - 1) * ndtr(-delta / (2.0 * np.atleast_1d(np.asarray(sigma,
                                                                        dtype=np.float64))))


def ncc_error_monte_carlo(means: np.ndarray, sigma: float, samples_per_class: int,
                          rng: np.random.Generator, weight: np.ndarray | None = None,
                          bias: np.ndarray | None = None, chunk: int = 20000
                          ) -> dict[str, float]:
    """Monte-Carlo error of NCC decoding (argmin_c ‖h − μ_c‖) on h = μ_y + σz; with
    ``weight`` also the error of argmax(W h + b) and the fraction where the two disagree."""
    c, d = means.shape
    sq = np.sum(means * means, axis=1)
    errs = mism = cls_errs = 0
    total = 0
    for start in range(0, samples_per_class * c, chunk):
        m = min(chunk, samples_per_class * c - start)
        y = (np.arange(start, start + m) % c)
        h = means[y] + sigma * rng.normal(size=(m, d))
        ncc = np.argmin(sq[None, :] - 2.0 * h @ means.T, axis=1)
        errs += int(np.sum(ncc != y))
        if weight is not None:
            pred = np.argmax(h @ weight.T + (0.0 if bias is None else bias), axis=1)
            cls_errs += int(np.sum(pred != y))
            mism += int(np.sum(pred != ncc))
        total += m
    out = {"ncc_error": errs / total, "samples": float(total)}
    if weight is not None:
        out["classifier_error"] = cls_errs / total
        out["mismatch"] = mism / total
    return out


# ---------------------------------------------------------------------------- figure


def plot_last_layer(sweep: dict[str, Any], trajectories: list[dict[str, Any]],
                    channel: dict[str, Any], out_path: str | Path) -> Path:
    """Three panels: self-duality vs σ, self-duality vs GD step, NCC error on the channel."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncollapse.io import atomic_savefig

    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.2), dpi=100)
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
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
    c = sweep["num_classes"]
    fig.suptitle(f"Training only the last layer on collapsed features (C={c}, "
                 f"d={sweep['dim']}, n={sweep['per_class']}/class, λ_W={sweep['lambda_w']:g})",
                 fontsize=11)
    fig.tight_layout()
    out_path = atomic_savefig(fig, out_path, format="png")
    plt.close(fig)
    return out_path


# ---------------------------------------------------------------------------- CLI


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``ncollapse theory last-layer``."""
    from ncollapse.commands.theory import add_common_arguments

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
    """``ncollapse theory last-layer``: sweep σ, train the classifier, decode the channel."""
    from ncollapse import measure
    from ncollapse.theory.implicit_bias import collapsed_data

    c, n, d = args.classes, args.per_class, args.dim
    lw, lb, bias = args.lambda_w, args.lambda_b, args.bias
    timings: dict[str, float] = {}

    def solve(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        h, y, means = collapsed_data(c, n, d, noise=sigma, seed=args.seed)
        return h, y, means, train_classifier(h, y, c, lambda_w=lw, lambda_b=lb, bias=bias)

    start = time.perf_counter()
    h, y, means, sol = solve(args.noise)
    timings["solve_s"] = time.perf_counter() - start
    metrics = measure(h, y, weight=sol["weight"], bias=sol["bias"], num_classes=c)
    closed = noiseless_solution(c, 1.0, lw)
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

        gd = train_classifier(hs, ys, c, lambda_w=lw, lambda_b=lb, bias=bias, method="gd",
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
        "exact": channel_error_exact(c, ch_sigmas).tolist(),
        "union": channel_error_union(c, ch_sigmas).tolist(),
        "orthogonal_exact": channel_error_exact(c, ch_sigmas, distance=math.sqrt(2.0)).tolist(),
        "mc_ncc": [], "mc_classifier": [], "mc_mismatch": [], "mc_samples": [],
    }
    for s in ch_sigmas:
        hs, ys, mu = collapsed_data(c, n, d, noise=float(s), seed=args.seed)
        ts = train_classifier(hs, ys, c, lambda_w=lw, lambda_b=lb, bias=bias)
        mc = ncc_error_monte_carlo(mu, float(s), args.mc_samples, rng, weight=ts["weight"],
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
    figures: list[str] = []
    if not args.no_figures:
        figures.append(str(plot_last_layer(sweep, trajectories, channel,
                                           args.out / "last-layer.png")))
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
