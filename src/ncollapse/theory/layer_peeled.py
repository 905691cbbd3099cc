"""Norm-constrained layer-peeled model [Fan21]: balanced ETF and minority collapse.

    minimise   (1/N)·Σ_i CE(W h_i, y_i)                      (no bias)
    subject to (1/C)·Σ_c ‖w_c‖² ≤ E_W,   (1/C)·Σ_c (1/n_c)·Σ_{i∈c} ‖h_i‖² ≤ E_H.

Two independent solvers (see ``docs/theory/layer-peeled.md``):

- L-BFGS on the constraint surface: both constraints are active at the optimum, so W and H are
  parametrised as scaled unit vectors, W = sqrt(C·E_W)·U/‖U‖, H = sqrt(C·E_H)·V/‖V‖_ω with
  ‖V‖_ω² = Σ_i ‖v_i‖²/n_{y_i}; works on the per-sample problem or on the class means.
- The convex SDP of Fang et al. on the Gram matrix Z of [H̄; W] (class means H̄, which is optimal
  by Jensen), solved with cvxpy/Clarabel: an exact reformulation when d ≥ 2C, a lower bound else.

Classes 0..C_A−1 are the majority (n_A samples each), C_A..C−1 the minority (n_B each).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from ncollapse.theory._solve import cross_entropy, minimize_lbfgs

__all__ = [
    "HELP",
    "LayerPeeledProblem",
    "LayerPeeledSolution",
    "balanced_closed_form",
    "configure_parser",
    "minority_cosine",
    "run_cli",
    "solve",
    "solve_sdp",
    "sweep_ratio",
]

HELP = ("norm-constrained layer-peeled model (Fang et al. 2021): balanced ETF vs closed form, "
        "minority collapse as the imbalance ratio R grows")


@dataclass(frozen=True)
class LayerPeeledProblem:
    """Sizes and budgets: ``counts[c]`` samples in class c, feature dimension ``dim``."""

    counts: tuple[float, ...]
    dim: int
    energy_w: float = 1.0
    energy_h: float = 1.0

    def __post_init__(self) -> None:
        if len(self.counts) < 2:
            raise ValueError(f"need at least 2 classes, got counts={self.counts}")
        if any(not (c > 0 and math.isfinite(c)) for c in self.counts):
            raise ValueError(f"every class count must be a finite number > 0, got {self.counts}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) \
                or self.dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {self.dim!r}")
        for name in ("energy_w", "energy_h"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number > 0, got {v}")

    @classmethod
    def imbalanced(cls, *, majority: int, minority: int, ratio: float, minority_count: float = 1,
                   dim: int, energy_w: float = 1.0, energy_h: float = 1.0
                   ) -> LayerPeeledProblem:
        """C_A = ``majority`` classes with R·n_B samples, C_B = ``minority`` with n_B each."""
        if majority < 1 or minority < 1:
            raise ValueError(f"need >= 1 majority and >= 1 minority class, got {majority}, "
                             f"{minority}")
        if not ratio >= 1:
            raise ValueError(f"the imbalance ratio R = n_A/n_B must be >= 1, got {ratio}")
        counts = (float(ratio * minority_count),) * majority + (float(minority_count),) * minority
        return cls(counts=counts, dim=dim, energy_w=energy_w, energy_h=energy_h)

    @property
    def classes(self) -> int:
        return len(self.counts)

    @property
    def weights(self) -> np.ndarray:
        """Class weights π_c = n_c/N of the class-mean problem."""
        n = np.asarray(self.counts, dtype=np.float64)
        return n / n.sum()

    def labels(self) -> np.ndarray:
        """Per-sample labels (needs integer counts)."""
        counts = [int(round(c)) for c in self.counts]
        if any(abs(c - r) > 1e-9 for c, r in zip(counts, self.counts, strict=True)):
            raise ValueError(f"the per-sample problem needs integer class counts, got "
                             f"{self.counts}; pass an integer ratio * per-class count")
        return np.repeat(np.arange(self.classes), counts)


def balanced_closed_form(classes: int, energy_w: float, energy_h: float) -> float:
    """Optimal value with balanced classes (d ≥ C−1): W a simplex ETF with ‖w_c‖² = E_W and
    h_{c,i} = sqrt(E_H/E_W)·w_c, so the own logit is sqrt(E_W E_H), every other one
    −sqrt(E_W E_H)/(C−1): log(1 + (C−1)·exp(−C·sqrt(E_W E_H)/(C−1)))."""
    c = int(classes)
    return math.log1p((c - 1) * math.exp(-c * math.sqrt(energy_w * energy_h) / (c - 1)))


@dataclass
class LayerPeeledSolution:
    """Solver output: W (C, d), features (N, d) or class means (C, d), objective, KKT residual."""

    problem: LayerPeeledProblem
    weight: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    objective: float
    kkt_residual: float
    gradient_norm: float
    converged: bool
    iterations: int
    seed: int
    time_s: float
    per_sample: bool
    seed_objectives: dict[int, float] = field(default_factory=dict)


def _scale(v: np.ndarray, omega: np.ndarray, budget: float) -> tuple[np.ndarray, float]:
    norm = math.sqrt(float(np.sum(omega[:, None] * v * v)))
    if norm == 0.0:
        raise FloatingPointError("a parameter block collapsed to 0; use another seed")
    return math.sqrt(budget) * v / norm, norm


def _objective_terms(problem: LayerPeeledProblem, per_sample: bool):
    c = problem.classes
    if per_sample:
        labels = problem.labels()
        omega_h = 1.0 / np.asarray(problem.counts)[labels]
    else:
        labels = np.arange(c)
        omega_h = np.ones(c)
    pi = None if per_sample else problem.weights
    omega_w = np.ones(c)
    return labels, omega_h, omega_w, pi


def _loss(w: np.ndarray, h: np.ndarray, labels: np.ndarray,
          pi: np.ndarray | None) -> tuple[float, np.ndarray, np.ndarray]:
    """Objective and gradients w.r.t. W and H (per sample, or class means weighted by π)."""
    logits = h @ w.T
    if pi is None:
        f, dz = cross_entropy(logits, labels)
    else:
        rows = np.arange(len(labels))
        lse = logsumexp(logits, axis=1)
        f = float(pi @ (lse - logits[rows, labels]))
        dz = np.exp(logits - lse[:, None])
        dz[rows, labels] -= 1.0
        dz *= pi[:, None]
    return f, dz.T @ h, dz @ w


def _fun_grad(problem: LayerPeeledProblem, per_sample: bool):
    labels, omega_h, omega_w, pi = _objective_terms(problem, per_sample)
    c, d = problem.classes, problem.dim
    budget_w, budget_h = c * problem.energy_w, c * problem.energy_h
    nw = c * d

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        u = x[:nw].reshape(c, d)
        v = x[nw:].reshape(-1, d)
        w, nu = _scale(u, omega_w, budget_w)
        h, nv = _scale(v, omega_h, budget_h)
        f, gw, gh = _loss(w, h, labels, pi)
        # chain rule through x -> sqrt(B)·x/‖x‖_ω
        gu = (math.sqrt(budget_w) / nu) * (gw - (np.sum(gw * u) / nu**2) * omega_w[:, None] * u)
        gv = (math.sqrt(budget_h) / nv) * (gh - (np.sum(gh * v) / nv**2) * omega_h[:, None] * v)
        return f, np.concatenate([gu.ravel(), gv.ravel()])

    return fg, labels, omega_h, pi


def _kkt_residual(gw: np.ndarray, gh: np.ndarray, w: np.ndarray, h: np.ndarray,
                  omega_h: np.ndarray) -> float:
    """Norm of the objective's gradient minus its component normal to the (active) constraints."""
    rw = gw - (np.sum(gw * w) / np.sum(w * w)) * w
    wh = omega_h[:, None] * h
    rh = gh - (np.sum(gh * h) / np.sum(wh * h)) * wh
    return float(math.sqrt(np.sum(rw * rw) + np.sum(rh * rh)))


def solve(problem: LayerPeeledProblem, *, per_sample: bool = True,
          seeds: tuple[int, ...] | list[int] = (0, 1, 2), gtol: float = 1e-10,
          max_iter: int = 20000, x0: np.ndarray | None = None) -> LayerPeeledSolution:
    """L-BFGS on the constraint surface from several random inits; the best run.

    ``per_sample=False`` solves the class-mean problem (weights π_c = n_c/N; any positive,
    even non-integer, counts). ``x0`` = concatenated (W, H) warm start for the first seed.
    """
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    fg, labels, omega_h, pi = _fun_grad(problem, per_sample)
    c, d = problem.classes, problem.dim
    rows = len(labels)
    start = time.perf_counter()
    best = None
    per_seed: dict[int, float] = {}
    for k, seed in enumerate(seeds):
        if k == 0 and x0 is not None:
            x_init = np.asarray(x0, dtype=np.float64).ravel()
        else:
            x_init = np.random.default_rng(seed).standard_normal((c + rows) * d)
        res = minimize_lbfgs(fg, x_init, gtol=gtol, max_iter=max_iter)
        per_seed[int(seed)] = res.fun
        if best is None or res.fun < best[0].fun - 1e-13:
            best = (res, int(seed))
    assert best is not None
    res, seed = best
    w, _ = _scale(res.x[: c * d].reshape(c, d), np.ones(c), c * problem.energy_w)
    h, _ = _scale(res.x[c * d:].reshape(rows, d), omega_h, c * problem.energy_h)
    f, gw, gh = _loss(w, h, labels, pi)
    kkt = _kkt_residual(gw, gh, w, h, omega_h)
    return LayerPeeledSolution(problem=problem, weight=w, features=h, labels=labels,
                               objective=f, kkt_residual=kkt, gradient_norm=res.grad_norm,
                               converged=res.converged, iterations=res.iterations, seed=seed,
                               time_s=time.perf_counter() - start, per_sample=per_sample,
                               seed_objectives=per_seed)


@dataclass
class SDPSolution:
    """The convex program's optimum: value, Gram blocks W Wᵀ, H̄ H̄ᵀ, W H̄ᵀ, solver status."""

    objective: float
    weight_gram: np.ndarray
    mean_gram: np.ndarray
    cross_gram: np.ndarray
    status: str
    time_s: float


def solve_sdp(problem: LayerPeeledProblem, *, tol: float = 1e-9) -> SDPSolution:
    """Fang et al.'s convex reformulation on Z = [H̄; W][H̄; W]ᵀ ⪰ 0, solved by Clarabel.

    minimise Σ_c π_c [logsumexp_j Z_{C+j,c} − Z_{C+c,c}] s.t. tr Z_HH ≤ C·E_H, tr Z_WW ≤ C·E_W.
    Exact when d ≥ 2C (every such Z is a Gram matrix in R^d); a lower bound otherwise.
    """
    import cvxpy as cp

    c = problem.classes
    pi = problem.weights
    z = cp.Variable((2 * c, 2 * c), PSD=True)
    terms = [pi[k] * (cp.log_sum_exp(z[c:, k]) - z[c + k, k]) for k in range(c)]
    cons = [cp.trace(z[:c, :c]) <= c * problem.energy_h,
            cp.trace(z[c:, c:]) <= c * problem.energy_w]
    prob = cp.Problem(cp.Minimize(cp.sum(cp.hstack(terms))), cons)
    start = time.perf_counter()
    with warnings.catch_warnings():  # "optimal_inaccurate" is reported in ``status`` instead
        warnings.simplefilter("ignore", UserWarning)
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol,
                   tol_ktratio=1e-8, max_iter=500)
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"the SDP solver failed: status {prob.status}")
    zv = np.asarray(z.value)
    return SDPSolution(objective=float(prob.value), weight_gram=zv[c:, c:], mean_gram=zv[:c, :c],
                       cross_gram=zv[c:, :c], status=str(prob.status),
                       time_s=time.perf_counter() - start)


def minority_cosine(weight_or_gram: np.ndarray, minority: list[int] | np.ndarray, *,
                    gram: bool = False) -> float:
    """Mean pairwise cosine between the minority classifiers w_c (c in ``minority``).

    NaN when a minority classifier has (numerically) vanished, ‖w_c‖ < 1e-6·max_c′‖w_c′‖:
    its direction is then undefined (the strongest form of minority collapse, w_c = 0).
    """
    g = np.asarray(weight_or_gram, dtype=np.float64)
    if not gram:
        g = g @ g.T
    idx = np.asarray(minority)
    if len(idx) < 2:
        raise ValueError("need at least 2 minority classes to measure their angle")
    diag = np.sqrt(np.clip(np.diag(g), 0.0, None))
    if np.any(diag[idx] < 1e-6 * diag.max()):
        return float("nan")
    cos = g / np.outer(diag, diag)
    sub = cos[np.ix_(idx, idx)]
    return float(sub[~np.eye(len(idx), dtype=bool)].mean())


def sweep_ratio(*, majority: int, minority: int, dim: int, energy_w: float, energy_h: float,
                ratios: np.ndarray | list[float], seeds: tuple[int, ...] = (0, 1),
                sdp: bool = True, gtol: float = 1e-10) -> list[dict[str, float]]:
    """Minority cosine and objective vs R (class-mean problem, warm-started along R)."""
    rows = []
    x0 = None
    minority_idx = list(range(majority, majority + minority))
    for r in ratios:
        p = LayerPeeledProblem.imbalanced(majority=majority, minority=minority, ratio=float(r),
                                          dim=dim, energy_w=energy_w, energy_h=energy_h)
        sol = solve(p, per_sample=False, seeds=seeds, gtol=gtol, x0=x0)
        x0 = np.concatenate([sol.weight.ravel(), sol.features.ravel()])
        norms = np.linalg.norm(sol.weight, axis=1)
        row = {"ratio": float(r), "objective": sol.objective,
               "minority_cosine": minority_cosine(sol.weight, minority_idx),
               "minority_norm_ratio": float(norms[minority_idx].mean()
                                            / norms[:majority].mean()),
               "kkt_residual": sol.kkt_residual}
        if sdp:
            s = solve_sdp(p)
            row["sdp_objective"] = s.objective
            row["sdp_minority_cosine"] = minority_cosine(s.weight_gram, minority_idx, gram=True)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- CLI


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
    from ncollapse.commands.theory import add_common_arguments

    add_common_arguments(p, classes=10, per_class=5, dim=20)
    p.set_defaults(lambda_w=None, lambda_h=None, lambda_b=None)
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
    g.add_argument("--max-ratio", type=float, default=1e4, help="largest R of the sweep")
    g.add_argument("--sweep-points", type=int, default=13,
                   help="R values in the minority-collapse sweep (0: no sweep)")
    g.add_argument("--sweep-energies", type=_energy_pairs, default=_energy_pairs("2,2 3,3 5,5"),
                   help="(E_W,E_H) pairs for the sweep (default '2,2 3,3 5,5')")
    g.add_argument("--no-sdp", action="store_true", help="skip the convex (SDP) cross-check")


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """``ncollapse theory layer-peeled``: solve, compare, sweep R, plot, return the JSON."""
    from ncollapse import measure

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
    problem = LayerPeeledProblem.imbalanced(
        majority=majority, minority=minority, ratio=args.ratio, minority_count=args.per_class,
        dim=args.dim, energy_w=args.energy_w, energy_h=args.energy_h)
    seeds = tuple(range(args.seed, args.seed + args.restarts))
    sol = solve(problem, per_sample=True, seeds=seeds)
    balanced = args.ratio == 1.0
    cf = balanced_closed_form(c, args.energy_w, args.energy_h) \
        if balanced and args.dim >= c - 1 else None
    metrics = measure(sol.features, sol.labels, weight=sol.weight).to_dict()
    sdp = None if args.no_sdp else solve_sdp(problem)
    minority_idx = list(range(majority, c))
    min_cos = minority_cosine(sol.weight, minority_idx) if minority >= 2 else None
    rows: dict[str, list[dict[str, float]]] = {}
    figures: list[str] = []
    if args.sweep_points > 0 and not args.no_figures:
        if minority < 2:
            raise ValueError("the minority-collapse sweep needs >= 2 minority classes; lower "
                             "--majority or pass --sweep-points 0")
        ratios = np.geomspace(1.0, args.max_ratio, args.sweep_points)
        for ew, eh in args.sweep_energies:
            rows[f"{ew:g},{eh:g}"] = sweep_ratio(
                majority=majority, minority=minority, dim=args.dim, energy_w=ew, energy_h=eh,
                ratios=ratios, sdp=not args.no_sdp)
        figures.append(str(_figure(rows, sol, majority, Path(args.out))))
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
            f"R={r['ratio']:.3g}:{r['minority_cosine']:.3f}" for r in rr))
    return {
        "model": "layer-peeled", "classes": c, "majority": majority, "minority": minority,
        "ratio": args.ratio, "per_class_minority": args.per_class, "dim": args.dim,
        "energy_w": args.energy_w, "energy_h": args.energy_h,
        "objective": sol.objective, "closed_form_objective": cf, "metrics": metrics,
        "sdp_objective": sdp.objective if sdp is not None else None,
        "kkt_residual": sol.kkt_residual, "gradient_norm": sol.gradient_norm,
        "minority_cosine": min_cos, "time_s": sol.time_s,
        "seed_objectives": {str(k): v for k, v in sol.seed_objectives.items()},
        "sweep": rows, "summary": summary, "figures": figures,
    }


def _figure(rows: dict[str, list[dict[str, float]]], sol: LayerPeeledSolution, majority: int,
            out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncollapse.io import atomic_savefig

    c = sol.problem.classes
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3),
                             gridspec_kw={"width_ratios": [1.35, 1.0, 0.95]})
    for k, (key, rr) in enumerate(rows.items()):
        r = [x["ratio"] for x in rr]
        axes[0].semilogx(r, [x["minority_cosine"] for x in rr], f"C{k}-", lw=1.8,
                         label=f"E_W = E_H = {key.split(',')[0]}" if key.split(",")[0]
                         == key.split(",")[1] else f"E_W, E_H = {key}")
        if "sdp_minority_cosine" in rr[0]:
            axes[0].semilogx(r, [x["sdp_minority_cosine"] for x in rr], f"C{k}o", ms=5,
                             mfc="none")
        axes[1].loglog(r, [max(x["minority_norm_ratio"], 1e-12) for x in rr], f"C{k}-", lw=1.8)
    ax = axes[0]
    ax.plot([], [], "ko", mfc="none", label="convex SDP (Clarabel)")
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.axhline(-1.0 / (c - 1), color="0.5", lw=0.8, ls="--", label="ETF cosine −1/(C−1)")
    ax.set_xlabel("imbalance ratio R = n_A / n_B")
    ax.set_ylabel("mean cosine between minority classifiers")
    ax.set_title(f"minority collapse (C_A = {majority}, C_B = {c - majority}, d = "
                 f"{sol.problem.dim})")
    ax.set_ylim(-0.2, 1.42)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.set_xlabel("imbalance ratio R")
    ax.set_ylabel("mean ‖w_minority‖ / mean ‖w_majority‖")
    ax.set_title("minority classifiers shrink")
    ax.grid(alpha=0.3, which="both")
    ax = axes[2]
    if rows:
        key = list(rows)[-1]
        ew, eh = (float(x) for x in key.split(","))
        ratio = rows[key][-1]["ratio"]
        p = LayerPeeledProblem.imbalanced(majority=majority, minority=c - majority, ratio=ratio,
                                          dim=sol.problem.dim, energy_w=ew, energy_h=eh)
        w = solve(p, per_sample=False, seeds=(0,)).weight
        n = np.linalg.norm(w, axis=1)
        cos = (w @ w.T) / np.outer(n, n)
        im = ax.imshow(cos, vmin=-1, vmax=1, cmap="RdBu_r")
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.axhline(majority - 0.5, color="k", lw=0.8)
        ax.axvline(majority - 0.5, color="k", lw=0.8)
        ax.set_title(f"cos(w_c, w_c′) at R = {ratio:g}, E = {key}")
        ax.set_xlabel("class: majority | minority")
    fig.tight_layout()
    path = out / "theory-layer-peeled.png"
    atomic_savefig(fig, path, format="png", dpi=90)
    plt.close(fig)
    return path
