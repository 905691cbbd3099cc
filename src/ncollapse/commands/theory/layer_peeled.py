"""``ncollapse theory layer-peeled``: balanced ETF vs closed form, minority collapse vs R."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ncollapse.commands.theory import add_common_arguments
from ncollapse.metrics import measure
from ncollapse.theory import layer_peeled as lp

HELP = ("norm-constrained layer-peeled model (Fang et al. 2021): balanced ETF vs closed form, "
        "minority collapse as the imbalance ratio R grows (thresholds by bisection)")


def _energy_pairs(text: str) -> list[tuple[float, float]]:
    pairs = []
    for item in text.split():
        try:
            a, b = (float(x) for x in item.split(","))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"--sweep-energies takes space-separated E_W,E_H pairs like '1,1 5,5', got "
                f"{item!r}") from exc
        pairs.append((a, b))
    return pairs


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``ncollapse theory layer-peeled``."""
    add_common_arguments(p, classes=10, per_class=5, dim=20, lambda_w=None, lambda_h=None,
                         lambda_b=None, lambda_none="not used: this model has norm budgets, "
                                                    "see --energy-w/--energy-h")
    g = p.add_argument_group("layer-peeled")
    g.add_argument("--energy-w", type=float, default=1.0, help="budget E_W on (1/C)Σ‖w_c‖²")
    g.add_argument("--energy-h", type=float, default=1.0,
                   help="budget E_H on (1/C)Σ_c (1/n_c)Σ_i ‖h_{c,i}‖²")
    g.add_argument("--majority", type=int, default=None,
                   help="number of majority classes C_A (default C/2, rounded down)")
    g.add_argument("--ratio", type=float, default=1.0,
                   help="imbalance R = n_A/n_B for the main solve (1 = balanced); --per-class "
                        "is n_B and R·n_B must be an integer")
    g.add_argument("--restarts", type=int, default=3, help="random inits for the main solve")
    g.add_argument("--max-ratio", type=float, default=1e4,
                   help="largest R of the sweep and of the threshold search")
    g.add_argument("--sweep-points", type=int, default=13,
                   help="R values in the minority-collapse sweep (0: no sweep, no thresholds)")
    g.add_argument("--sweep-energies", type=_energy_pairs,
                   default=_energy_pairs("1,1 2,2 3,3 5,5"),
                   help="(E_W,E_H) pairs for the sweep (default '1,1 2,2 3,3 5,5')")
    g.add_argument("--threshold-rtol", type=float, default=0.01,
                   help="bisect each minority-collapse threshold until hi/lo <= 1 + this "
                        "(0: no threshold search)")
    g.add_argument("--no-sdp", action="store_true", help="skip the convex (SDP) cross-check")


def _fmt_cos(v: float | None) -> str:
    return "vanished" if v is None else f"{v:.3f}"


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Solve, compare with the closed form and the SDP, sweep R, bisect the thresholds."""
    for flag in ("lambda_w", "lambda_h", "lambda_b"):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} does not apply: the layer-peeled "
                             "model has norm budgets; use --energy-w / --energy-h")
    c = args.classes
    majority = c // 2 if args.majority is None else args.majority
    minority = c - majority
    if not 1 <= majority < c:
        raise ValueError(f"--majority must be between 1 and C-1 = {c - 1}, got {majority}")
    if args.restarts < 1:
        raise ValueError(f"--restarts must be >= 1, got {args.restarts}")
    if args.sweep_points > 0 and minority < 2:
        raise ValueError("the minority-collapse sweep needs >= 2 minority classes; lower "
                         "--majority or pass --sweep-points 0")
    problem = lp.LayerPeeledProblem.imbalanced(
        majority=majority, minority=minority, ratio=args.ratio, minority_count=args.per_class,
        dim=args.dim, energy_w=args.energy_w, energy_h=args.energy_h)
    sol = lp.solve(problem, per_sample=True,
                   seeds=tuple(range(args.seed, args.seed + args.restarts)))
    balanced = args.ratio == 1.0
    cf = lp.balanced_closed_form(c, args.energy_w, args.energy_h) \
        if balanced and args.dim >= c - 1 else None
    metrics = measure(sol.features, sol.labels, weight=sol.weight).to_dict()
    sdp = None if args.no_sdp else lp.solve_sdp(problem)
    minority_idx = list(range(majority, c))
    min_cos = lp.minority_cosine(sol.weight, minority_idx) if minority >= 2 else None
    rows: dict[str, list[dict[str, Any]]] = {}
    thresholds: dict[str, dict[str, Any]] = {}
    if args.sweep_points > 0:
        ratios = np.geomspace(1.0, args.max_ratio, args.sweep_points)
        for ew, eh in args.sweep_energies:
            key = f"{ew:g},{eh:g}"
            rows[key] = lp.sweep_ratio(majority=majority, minority=minority, dim=args.dim,
                                       energy_w=ew, energy_h=eh, ratios=ratios,
                                       sdp=not args.no_sdp)
            if args.threshold_rtol > 0:
                thresholds[key] = lp.collapse_threshold(
                    majority=majority, minority=minority, dim=args.dim, energy_w=ew,
                    energy_h=eh, ratio_max=args.max_ratio, rtol=args.threshold_rtol)
    agreement = {key: lp.sdp_agreement(rr) for key, rr in rows.items()} if not args.no_sdp \
        else {}
    summary = [
        f"layer-peeled [Fang et al. 2021]: C={c} (C_A={majority} majority with n_A="
        f"{problem.counts[0]:g}, C_B={minority} minority with n_B={problem.counts[-1]:g}, "
        f"R={args.ratio:g}), d={args.dim}, E_W={args.energy_w:g}, E_H={args.energy_h:g}",
        f"  solver: L-BFGS on the constraint surface, seeds {list(sol.seed_objectives)}, "
        f"{sol.iterations} iterations, {sol.time_s:.2f} s",
        f"  objective            {sol.objective:.15g}",
        f"  closed form          {cf:.15g}" if cf is not None
        else "  closed form          none (imbalanced)",
        f"  convex SDP           {sdp.objective:.15g}  ({sdp.status}, {sdp.time_s:.2f} s)"
        if sdp is not None else "  convex SDP           skipped",
        f"  KKT residual         {sol.kkt_residual:.3g}",
    ]
    if min_cos is not None:
        summary.append(f"  mean cosine between minority classifiers {min_cos:.6f}")
    keys = ("nc1", "nc1_trace_ratio", "equinorm_weights", "equiangular_weights",
            "etf_error_weights", "self_duality")
    summary.append("  NC metrics: " + ", ".join(
        f"{k}={metrics[k]:.3g}" for k in keys if metrics.get(k) is not None))
    if min_cos is not None and min_cos > 1 - 1e-6:
        summary.append("  (minority collapse: the minority class means coincide, so Σ_B loses "
                       "rank and nc1 = Tr(Σ_W Σ_B^†)/C is ill-posed; nc1_trace_ratio shows the "
                       "within-class collapse)")
    for key, rr in rows.items():
        summary.append(f"  sweep E_W,E_H={key}: minority cosine " + " ".join(
            f"R={r['ratio']:.3g}:{_fmt_cos(r['minority_cosine'])}" for r in rr))
        gone = [r for r in rr if r["minority_vanished"]]
        if gone:
            noise = [r["sdp_minority_cosine_noise"] for r in gone
                     if r.get("sdp_minority_cosine_noise") is not None]
            summary.append(
                f"    minority classifiers vanish from R={gone[0]['ratio']:.3g} (norm ratio "
                f"{max(r['minority_norm_ratio'] for r in gone):.1e}): their cosines are "
                "undefined" + (f"; the SDP's ({min(noise):.2f} to {max(noise):.2f}) are noise "
                               "at its tolerance" if noise else ""))
        th = thresholds.get(key)
        if th is not None:
            b = th["bracket"]
            summary.append(
                f"    threshold (cos >= 1 - {th['cos_tol']:g}) by bisection: "
                + (f"R in [{b[0]:.4g}, {b[1]:.4g}] (cos {th['cosine_lo']:.7f} -> "
                   f"{th['cosine_hi']:.7f})" if b is not None
                   else f"none up to R={th['ratio_max']:g}")
                + (f"; minority rows vanish for R in [{th['vanish_bracket'][0]:.4g}, "
                   f"{th['vanish_bracket'][1]:.4g}]" if th["vanish_bracket"] else ""))
        ag = agreement.get(key)
        if ag and ag["max_objective_gap"] is not None:
            summary.append(
                f"    SDP vs L-BFGS: max |objective gap| {ag['max_objective_gap']:.2g} (R="
                f"{ag['objective_gap_ratio']:.3g})" + (
                    f", max |cosine gap| {ag['max_cosine_gap']:.2g} (R="
                    f"{ag['cosine_gap_ratio']:.3g})" if ag["max_cosine_gap"] is not None
                    else ""))
    figures = {}
    if not args.no_figures and rows:
        from ncollapse.theory import figures as theory_figures  # matplotlib: only when drawing

        key = list(rows)[-1]
        ew, eh = (float(x) for x in key.split(","))
        ratio = rows[key][-1]["ratio"]
        p = lp.LayerPeeledProblem.imbalanced(majority=majority, minority=minority, ratio=ratio,
                                             dim=args.dim, energy_w=ew, energy_h=eh)
        w = lp.solve(p, per_sample=False, seeds=(args.seed,)).weight
        n = np.linalg.norm(w, axis=1)
        figures["theory-layer-peeled.png"] = theory_figures.layer_peeled_figure(
            rows, classes=c, majority=majority, dim=args.dim,
            cosine_matrix=(w @ w.T) / np.outer(n, n), cosine_label=f"at R = {ratio:g}, E = {key}",
            thresholds=thresholds)
    return {
        "model": "layer-peeled", "classes": c, "majority": majority, "minority": minority,
        "ratio": args.ratio, "per_class_minority": args.per_class, "dim": args.dim,
        "energy_w": args.energy_w, "energy_h": args.energy_h,
        "objective": sol.objective, "closed_form_objective": cf, "metrics": metrics,
        "sdp_objective": sdp.objective if sdp is not None else None,
        "kkt_residual": sol.kkt_residual, "gradient_norm": sol.gradient_norm,
        "minority_cosine": min_cos, "time_s": sol.time_s,
        "seed_objectives": {str(k): v for k, v in sol.seed_objectives.items()},
        "sweep": rows, "thresholds": thresholds, "sdp_agreement": agreement,
        "summary": summary, "figures": figures,
    }
