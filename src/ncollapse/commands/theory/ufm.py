"""``ncollapse theory ufm``: the unconstrained features model, solver vs closed form."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ncollapse.commands.theory import add_common_arguments
from ncollapse.theory import ufm

HELP = ("unconstrained features model: cross-entropy (Zhu et al. 2021) or MSE (Tirer & Bruna 2022, "
        "Mixon et al. 2020; with a bias and weight decay), solver vs closed-form minimizer")


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``ncollapse theory ufm``."""
    # lambda None = "the model's default": 5e-3, or 0 for the MSE-with-bias model (Mixon et al.)
    add_common_arguments(p, classes=10, per_class=50, dim=16, lambda_w=None, lambda_h=None,
                         lambda_b=None, lambda_none="default: 5e-3; 0 for MSE with a bias")
    g = p.add_argument_group("ufm")
    g.add_argument("--loss", choices=ufm.LOSSES, default="ce", help="cross-entropy or MSE")
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None,
                   help="learn a bias b (default: yes for CE, no for MSE; MSE with bias and "
                        "no weight decay is Mixon et al.'s model, solved as a gradient flow)")
    g.add_argument("--restarts", type=int, default=3,
                   help="number of random inits for L-BFGS (seeds seed, seed+1, ...)")
    g.add_argument("--gtol", type=float, default=1e-10, help="stop when the gradient norm < this")
    g.add_argument("--sweep-points", type=int, default=9,
                   help="lambda values in the norm-vs-lambda sweep (0: no sweep)")


def _resolve(args: argparse.Namespace) -> ufm.UFMProblem:
    bias = args.bias if args.bias is not None else args.loss == "ce"
    default = 0.0 if (args.loss == "mse" and bias) else 5e-3
    lw = default if args.lambda_w is None else args.lambda_w
    lh = default if args.lambda_h is None else args.lambda_h
    lb = default if args.lambda_b is None else args.lambda_b
    if not bias:
        if args.lambda_b not in (None, 0.0):
            raise ValueError("--lambda-b has no effect without a bias; drop it or pass --bias")
        lb = 0.0
    elif args.loss == "mse" and args.lambda_b is None and (lw > 0 or lh > 0):
        lb = 0.0  # MSE with a bias and weight decay: the closed form of λ_b = 0 by default
    if args.restarts < 1:
        raise ValueError(f"--restarts must be >= 1, got {args.restarts}")
    return ufm.UFMProblem(args.classes, args.per_class, args.dim, loss=args.loss, bias=bias,
                          lambda_w=lw, lambda_h=lh, lambda_b=lb)


def _is_flow(p: ufm.UFMProblem) -> bool:
    """MSE with a bias and no regularisation: solved as the gradient flow from a small init."""
    return p.loss == "mse" and p.bias and p.lambda_w == p.lambda_h == p.lambda_b == 0


def model_name(p: ufm.UFMProblem) -> str:
    """The variant and its reference, for titles and the summary."""
    if p.loss == "ce":
        return "CE with weight decay [Zhu et al. 2021]"
    if not p.bias:
        return "MSE, bias-free, weight decay [Tirer & Bruna 2022]"
    if _is_flow(p):
        return "MSE with bias, unregularized, gradient flow from small init [Mixon et al. 2020]"
    return "MSE with bias and weight decay (docs/theory/ufm.md)"


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Solve, compare with the closed form, sweep λ, return the JSON result."""
    p = _resolve(args)
    cf = ufm.closed_form(p)
    flow = _is_flow(p)
    if flow:
        sol = ufm.gradient_flow(p, seed=args.seed)
    else:
        sol = ufm.solve(p, seeds=tuple(range(args.seed, args.seed + args.restarts)),
                        gtol=args.gtol, keep_iterates=0 if args.no_figures else 30)
    metrics = ufm.solution_metrics(sol.weight, sol.features, sol.bias, p.labels)
    comparison = ufm.compare(sol, cf) if cf is not None else None
    rows: list[dict[str, Any]] = []
    if not flow and cf is not None and args.sweep_points > 0:
        rows = ufm.sweep(p, ufm.sweep_lambdas(p, args.sweep_points), seed=args.seed,
                         gtol=args.gtol)
    summary = [
        f"UFM: {model_name(p)}",
        f"  C={p.classes} n={p.per_class} d={p.dim} lambda_W={p.lambda_w:g} "
        f"lambda_H={p.lambda_h:g}" + (f" lambda_b={p.lambda_b:g}" if p.bias else " (no bias)"),
        f"  solver: {sol.method}, seeds {list(sol.seed_objectives)}, best seed {sol.seed}, "
        f"{sol.iterations} {'RHS evaluations' if flow else 'iterations'}, {sol.time_s:.2f} s",
        f"  objective            {sol.objective:.15g}",
        f"  closed form          {cf.objective:.15g}" if cf is not None
        else "  closed form          " + ufm.why_no_closed_form(p),
        f"  gradient norm        {sol.gradient_norm:.3g}"
        + ("" if sol.gradient_norm < 1e-8 else "  (NOT below 1e-8)"),
    ]
    if cf is not None and comparison is not None:
        summary.append(f"  |objective - closed form| {abs(comparison['objective_gap']):.3g}; "
                       f"regime: {cf.regime}")
        summary.append(f"  mean ||w_c||^2 {comparison['weight_sq_norm']:.10g} "
                       f"(closed form {cf.weight_sq_norm:.10g}); mean ||h_i||^2 "
                       f"{comparison['feature_sq_norm']:.10g} (closed form "
                       f"{cf.feature_sq_norm:.10g})")
        grams = [f"{k}={v:.2g}" for k, v in comparison.items()
                 if k.endswith("_error") and v is not None]
        if grams:
            summary.append("  max |difference| vs closed form: " + ", ".join(grams))
    if rows:
        gaps = [abs(r["objective"] - r["closed_form_objective"]) for r in rows
                if r["closed_form_objective"] is not None]
        summary.append(f"  sweep over {len(rows)} lambdas: max |objective - closed form| "
                       f"{max(gaps):.3g}")
    if metrics is not None:
        keys = ("nc1", "equinorm_weights", "equiangular_weights", "etf_error_weights",
                "self_duality")
        summary.append("  NC metrics: " + ", ".join(
            f"{k}={metrics[k]:.3g}" for k in keys if metrics.get(k) is not None))
        if p.loss == "mse" and not p.bias:
            summary.append(f"  bias-free MSE: W is an orthogonal frame, not a simplex ETF; "
                           f"orthogonal-frame error of W "
                           f"{ufm.orthogonal_frame_error(sol.weight):.3g} (so etf_error_weights "
                           "and self_duality stay away from 0)")
    else:
        summary.append("  NC metrics: undefined (the solution is H = 0)")
    figures = {}
    if not args.no_figures:
        from ncollapse.theory import figures as theory_figures  # matplotlib: only when drawing

        variant = "-nobias" if not p.bias else ("-bias" if flow or p.loss == "ce" else "-bias-wd")
        name = f"theory-ufm-{p.loss}{variant}.png"
        figures[name] = theory_figures.ufm_figure(p, sol, cf, ufm.iterate_trace(sol), rows,
                                                  model_name(p))
    return {
        "model": "ufm", "loss": p.loss, "bias": p.bias, "classes": p.classes,
        "per_class": p.per_class, "dim": p.dim, "lambda_w": p.lambda_w, "lambda_h": p.lambda_h,
        "lambda_b": p.lambda_b if p.bias else None,
        "objective": sol.objective,
        "closed_form_objective": cf.objective if cf is not None else None,
        "metrics": metrics,
        "gradient_norm": sol.gradient_norm, "converged": sol.gradient_norm < 1e-8,
        "orthogonal_error_weights": ufm.orthogonal_frame_error(sol.weight)
        if np.any(sol.weight) else None,
        "solver": sol.method, "iterations": sol.iterations, "time_s": sol.time_s,
        "seed_objectives": {str(k): v for k, v in sol.seed_objectives.items()},
        "closed_form": cf.to_dict() if cf is not None else None,
        "comparison": comparison, "sweep": rows,
        "summary": summary, "figures": figures,
    }
