"""``ncollapse theory central-path``: the renormalized flow on the central path [Han22]."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ncollapse.commands.theory import add_common_arguments
from ncollapse.geometry import etf_distance
from ncollapse.metrics import class_means, measure, mse_decomposition
from ncollapse.theory import central_path as cp

HELP = "MSE loss decomposition (NC1 + NC2/3 + LS-perp) and renormalized flow on the central path"


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``ncollapse theory central-path``."""
    add_common_arguments(p, classes=4, per_class=20, dim=6, lambda_w=0.0)
    g = p.add_argument_group("central path")
    g.add_argument("--steps", type=int, default=4000, help="renormalized gradient steps")
    g.add_argument("--rel-step", type=float, default=2e-3,
                   help="largest relative change of any ω_j per step (sets η)")
    g.add_argument("--omega-min", type=float, default=0.2, help="smallest initial ω_j")
    g.add_argument("--omega-max", type=float, default=3.0, help="largest initial ω_j")
    g.add_argument("--run", type=Path, default=None, metavar="RUN_DIR",
                   help="also report (and plot) the MSE decomposition over the epochs of this "
                        "MSE run")


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """Flow, checks against the exact dynamics, the run's decomposition if given."""
    # heavy (matplotlib): imported only when this command runs; it also reads the --run dir
    from ncollapse.theory import figures as theory_figures

    c, n, d = args.classes, args.per_class, args.dim
    run_data = theory_figures.read_mse_decomposition(args.run) if args.run is not None else None
    start = time.perf_counter()
    omega0 = np.geomspace(args.omega_max, args.omega_min, c - 1)
    h0, y = cp.initial_features(c, n, d, omega0, seed=args.seed)
    flow = cp.renormalized_flow(h0, y, steps=args.steps, rel_step=args.rel_step, progress=True)
    elapsed = time.perf_counter() - start
    h = flow["features"]
    omega = flow["omega"][-1]
    closed = 0.5 * float(np.sum(1.0 / (c + omega**2)))
    dec = mse_decomposition(h, y, np.zeros((c, d)), None, 0.0)
    objective = dec["nc1"] + dec["nc2_3"]
    rec = np.sort(flow["recurrence_omega"], axis=1)[:, ::-1]
    rec_err = float(np.max(np.abs(flow["omega"] / rec - 1.0)))
    ode_err = float(np.max(np.abs(flow["omega"] / flow["ode_omega"] - 1.0)))
    rng = np.random.default_rng(args.seed + 1)
    a = rng.normal(size=(d, d))
    inv_err = abs(cp.central_path_loss(h0 @ a.T + rng.normal(size=d), y, c)
                  - cp.central_path_loss(h0, y, c))
    metrics = measure(h, y, weight=dec["weight_ls"], bias=dec["bias_ls"], num_classes=c)
    means = class_means(h, y, c)[0]
    summary = [
        f"central path, renormalized flow: C={c}, N={c * n}, d={d}, {args.steps} steps, "
        f"t = {flow['time'][-1]:.4g}, {elapsed:.2f} s",
        "ω_j(0) = " + ", ".join(f"{v:.3g}" for v in flow["omega"][0]),
        "ω_j(t) = " + ", ".join(f"{v:.4g}" for v in omega)
        + f"   (ω_min/ω_max: {flow['omega'][0, -1] / flow['omega'][0, 0]:.3f} → "
        f"{omega[-1] / omega[0]:.4f})",
        f"loss on the central path {objective:.6e}; closed form ½Σ1/(C+ω²) = {closed:.6e}",
        f"max rel. deviation of ω_j from the exact recurrence: {rec_err:.2e}; "
        f"from the ODE: {ode_err:.2e}",
        f"invariance: |L(AH + c) − L(H)| = {inv_err:.2e} for a random A",
        f"whitened class means: relative distance to the nearest ETF {etf_distance(means):.3e}",
    ]
    result: dict[str, Any] = {
        "objective": objective, "closed_form_objective": closed, "metrics": metrics.to_dict(),
        "omega_initial": flow["omega"][0], "omega_final": omega, "flow_time": flow["time"][-1],
        "recurrence_max_rel_error": rec_err, "ode_max_rel_error": ode_err,
        "invariance_error": inv_err, "seconds": elapsed,
    }
    if run_data is not None:
        last = {k: float(v[-1]) for k, v in run_data.items()}
        result["run_decomposition_last"] = last
        summary.append(
            f"run {args.run}: epoch {last['epoch']:.0f}: L={last['loss']:.4e} = NC1 "
            f"{last['nc1']:.3e} + NC2/3 {last['nc2_3']:.3e} + LS⊥ {last['ls_perp']:.3e}"
        )
    figures = {}
    if not args.no_figures:
        figures["theory-central-path-flow.png"] = theory_figures.central_path_figure(flow)
        if run_data is not None:
            figures["theory-central-path-mse-run.png"] = theory_figures.mse_decomposition_figure(
                run_data, theory_figures.run_label(args.run))
    result["summary"] = summary
    result["figures"] = figures
    return result
