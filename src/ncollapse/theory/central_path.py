"""MSE loss decomposition and the central path (Han, Papyan & Donoho, ICLR 2022).

For features h_i (rows of ``features``), labels y_i, classifier W (C, d), bias b (C,) and
ridge λ ≥ 0 the loss is

    L = ½·mean_i ‖W h_i + b − e_{y_i}‖² + λ/2·(‖W‖_F² + ‖b‖²).

With W̃ = [W, b] and x_i = [h_i; 1] it is a ridge regression in W̃, minimised by the
least-squares classifier W̃_LS = [W_LS, b_LS] of ``../shared/nc-math.md``; the exact identity
L = L_NC1 + L_NC2/3 + L_LS⊥ follows (see docs/theory/central-path.md for the derivation).
The *central path* is W = W_LS(H): on it (λ = 0) the loss equals ½·Σ_j 1/(C + ω_j²), where
ω_j are the singular values of the signal-to-noise matrix Σ_W^{-1/2} M̃ (M̃ has the centred
class means as columns), so it is invariant to invertible affine maps of the features.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ncollapse.theory._solve import as_float64 as _as_float64

__all__ = [
    "central_path_gradient",
    "central_path_loss",
    "mse_decomposition",
    "ode_snr_trajectory",
    "plot_central_path",
    "plot_mse_decomposition",
    "read_mse_decomposition",
    "renormalize",
    "renormalized_flow",
    "snr_recurrence",
    "snr_singular_values",
]

HELP = "MSE loss decomposition (NC1 + NC2/3 + LS-perp) and renormalized flow on the central path"


# ---------------------------------------------------------------------------- input checks


def _as_labels(labels: Any, num_samples: int, num_classes: int | None) -> tuple[np.ndarray, int]:
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != num_samples:
        raise ValueError(
            f"labels must have shape ({num_samples},) to match features, got {y.shape}"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{y.min()}, {y.max()}]"
        )
    return y, int(num_classes)


def _balanced_counts(y: np.ndarray, num_classes: int, what: str) -> int:
    counts = np.bincount(y, minlength=num_classes)
    if num_classes < 2:
        raise ValueError(f"{what} needs at least 2 classes, got {num_classes}")
    if counts.min() == 0 or counts.min() != counts.max():
        raise ValueError(
            f"{what} is stated for balanced classes (every class the same number of samples); "
            f"got per-class counts {counts.tolist()}. Subsample to a balanced set first "
            "(e.g. ncollapse.data's balanced subsets)."
        )
    return int(counts[0])


def _class_means(h: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, d) class means; first centred on a close shift so the sums do not lose digits."""
    shift = h.mean(axis=0)
    means = np.zeros((num_classes, h.shape[1]))
    np.add.at(means, y, h - shift)
    means /= np.bincount(y, minlength=num_classes)[:, None]
    return means + shift


# ---------------------------------------------------------------------------- decomposition


def _least_squares(h: np.ndarray, means: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """W_LS, b_LS of nc-math.md for balanced classes (min-norm W_LS when the system is singular).

    K = Σ_T + λ/(1+λ)·μ_Gμ_Gᵀ + λI is formed as ZᵀZ and inverted through the SVD of Z, so the
    condition number that matters is that of Z (the square root of K's).
    """
    n, d = h.shape
    c = means.shape[0]
    mu_g = means.mean(axis=0)
    blocks = [(h - mu_g) / math.sqrt(n)]
    if lam > 0:
        blocks.append(math.sqrt(lam / (1.0 + lam)) * mu_g[None, :])
        blocks.append(math.sqrt(lam) * np.eye(d))
    z = np.vstack(blocks)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(z.shape) * np.finfo(np.float64).eps
    rhs = (means - mu_g[None, :] / (1.0 + lam)) / c  # (C, d) = (1/C)(Mᵀ − 1μ_Gᵀ/(1+λ))
    proj = rhs @ vt[keep].T  # (C, r)
    weight_ls = (proj / s[keep] ** 2) @ vt[keep]
    bias_ls = (np.full(c, 1.0 / c) - weight_ls @ mu_g) / (1.0 + lam)
    return weight_ls, bias_ls


def mse_decomposition(features: Any, labels: Any, weight: Any, bias: Any = None,
                      lam: float = 0.0, *, target_scale: float = 1.0) -> dict[str, Any]:
    """The exact split L = L_NC1 + L_NC2/3 + L_LS⊥ of the ridge MSE loss [Han22].

    Args:
        features: (N, d) features h_i (numpy or torch, any device); classes must be balanced.
        labels: (N,) integer labels in [0, C), C = ``weight.shape[0]``.
        weight: (C, d) classifier W.
        bias: (C,) bias b, or None for a bias-free classifier (b = 0, see below).
        lam: ridge λ ≥ 0 on W and b, as in L above.
        target_scale: k > 0 for targets k·e_y (the ``mse_scale`` of ``ncollapse.losses``):
            L_k(W, b) = k²·L(W/k, b/k), so every term is k² times that of (W/k, b/k) and
            W_LS, b_LS are k times those for k = 1.

    Returns:
        ``loss`` (L at the given W, b), ``nc1`` (L_NC1), ``nc2_3`` (L_NC2/3), ``ls_perp``
        (L_LS⊥ ≥ 0; 0 exactly when W̃ = W̃_LS), all floats, with loss = nc1 + nc2_3 + ls_perp
        to rounding, and ``weight_ls`` (C, d), ``bias_ls`` (C,) float64 arrays.

    With ``bias=None`` the loss is that of W̃ = [W, 0] and the decomposition is still exact,
    against the least-squares classifier *with* bias (so L_LS⊥ includes the cost of having no
    bias). With λ = 0 and singular Σ_T the least-squares classifier is not unique; the
    minimum-norm one is used and the identity remains exact (any minimiser satisfies it).
    """
    h = _as_float64(features, "features", 2)
    w = _as_float64(weight, "weight", 2)
    c, d = w.shape
    if h.shape[1] != d:
        raise ValueError(f"features have dim {h.shape[1]} but weight has shape {w.shape}")
    if bias is None:
        b = np.zeros(c)
    else:
        b = _as_float64(bias, "bias", 1)
        if b.shape != (c,):
            raise ValueError(f"bias must have shape ({c},) to match weight, got {b.shape}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.floating, np.integer)):
        raise TypeError(f"lam must be a real number, got {type(lam).__name__}")
    lam = float(lam)
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if isinstance(target_scale, bool) or not isinstance(target_scale, (int, float, np.floating,
                                                                         np.integer)):
        raise TypeError(f"target_scale must be a real number, got {type(target_scale).__name__}")
    k = float(target_scale)
    if not math.isfinite(k) or k <= 0:
        raise ValueError(f"target_scale must be finite and > 0, got {target_scale}")
    y, c = _as_labels(labels, h.shape[0], c)
    _balanced_counts(y, c, "the MSE decomposition")
    if k != 1.0:
        out = mse_decomposition(h, y, w / k, b / k, lam)
        return {"loss": k * k * out["loss"], "nc1": k * k * out["nc1"],
                "nc2_3": k * k * out["nc2_3"], "ls_perp": k * k * out["ls_perp"],
                "weight_ls": k * out["weight_ls"], "bias_ls": k * out["bias_ls"]}

    means = _class_means(h, y, c)
    weight_ls, bias_ls = _least_squares(h, means, lam)
    targets = np.eye(c)[y]

    def half_ridge(wm: np.ndarray, bv: np.ndarray) -> float:
        return 0.5 * lam * (float(np.sum(wm * wm)) + float(bv @ bv))

    resid = h @ w.T + b - targets
    loss = 0.5 * float(np.mean(np.sum(resid * resid, axis=1))) + half_ridge(w, b)

    within = (h - means[y]) @ weight_ls.T
    nc1 = 0.5 * float(np.mean(np.sum(within * within, axis=1))) + half_ridge(weight_ls, bias_ls)

    gap = means @ weight_ls.T + bias_ls[None, :] - np.eye(c)  # (W_LS M + b_LS 1ᵀ − I)ᵀ
    nc2_3 = float(np.sum(gap * gap)) / (2.0 * c)

    dw, db = w - weight_ls, b - bias_ls
    dev = h @ dw.T + db
    ls_perp = 0.5 * float(np.mean(np.sum(dev * dev, axis=1))) + half_ridge(dw, db)
    return {"loss": loss, "nc1": nc1, "nc2_3": nc2_3, "ls_perp": ls_perp,
            "weight_ls": weight_ls, "bias_ls": bias_ls}


# ---------------------------------------------------------------------------- central path


def _prepare(features: Any, labels: Any, num_classes: int | None, what: str
             ) -> tuple[np.ndarray, np.ndarray, int]:
    h = _as_float64(features, "features", 2)
    y, c = _as_labels(labels, h.shape[0], num_classes)
    _balanced_counts(y, c, what)
    return h, y, c


def central_path_loss(features: Any, labels: Any, num_classes: int | None = None) -> float:
    """The MSE loss (λ = 0) at the least-squares classifier of the features: L(W_LS(H), b_LS(H))."""
    h, y, c = _prepare(features, labels, num_classes, "the central-path loss")
    w, b = _least_squares(h, _class_means(h, y, c), 0.0)
    r = h @ w.T + b - np.eye(c)[y]
    return 0.5 * float(np.mean(np.sum(r * r, axis=1)))


def central_path_gradient(features: Any, labels: Any, num_classes: int | None = None
                          ) -> np.ndarray:
    """∇_H of the central-path loss, (N, d): row i is (1/N)·W_LSᵀ(W_LS h_i + b_LS − e_{y_i}).

    W_LS, b_LS minimise the loss for the current features, so their own dependence on H
    contributes nothing (envelope theorem).
    """
    h, y, c = _prepare(features, labels, num_classes, "the central-path gradient")
    w, b = _least_squares(h, _class_means(h, y, c), 0.0)
    r = h @ w.T + b - np.eye(c)[y]
    return (r @ w) / h.shape[0]


def _whitener(h: np.ndarray, y: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Σ_W^{-1/2} (symmetric), from the SVD of the class-centred features."""
    n, d = h.shape
    _, s, vt = np.linalg.svd((h - means[y]) / math.sqrt(n), full_matrices=False)
    if s.size < d or s.min() <= s.max() * d * np.finfo(np.float64).eps * 10:
        raise ValueError(
            f"the within-class covariance is singular (rank < d = {d}); the SNR matrix "
            "Σ_W^{-1/2} M̃ needs N − C ≥ d samples in general position"
        )
    return (vt.T / s) @ vt


def snr_singular_values(features: Any, labels: Any, num_classes: int | None = None
                        ) -> np.ndarray:
    """The C−1 largest singular values ω_j of the SNR matrix Σ_W^{-1/2} M̃, descending.

    M̃ (d × C) has the centred class means μ_c − μ_G as columns; Σ_W is the within-class
    covariance (1/N normalisation). Balanced classes; Σ_W must be invertible.
    """
    h, y, c = _prepare(features, labels, num_classes, "the SNR matrix")
    means = _class_means(h, y, c)
    centred = means - means.mean(axis=0)
    omega = np.linalg.svd(centred @ _whitener(h, y, means), compute_uv=False)
    out = np.zeros(c - 1)
    k = min(c - 1, omega.size)
    out[:k] = omega[:k]
    return out


def renormalize(features: Any, labels: Any, num_classes: int | None = None) -> np.ndarray:
    """The affinely renormalised features Σ_W^{-1/2}(h − μ_G): global mean 0, Σ_W = I."""
    h, y, c = _prepare(features, labels, num_classes, "renormalisation")
    means = _class_means(h, y, c)
    return (h - means.mean(axis=0)) @ _whitener(h, y, means)


def snr_recurrence(omega: np.ndarray, step: float, num_classes: int, num_samples: int
                   ) -> np.ndarray:
    """One step of the exact discrete dynamics of the ω_j under :func:`renormalized_flow`.

    ω ← ω·(1 + ηC/(N(C+ω²)²)) / (1 − ηω²/(N(C+ω²)²)) (derivation in docs/theory/central-path.md).
    """
    q = num_samples * (num_classes + omega**2) ** 2
    return omega * (1.0 + step * num_classes / q) / (1.0 - step * omega**2 / q)


def _ode_invariant(omega: np.ndarray, c: int, n: int) -> np.ndarray:
    """F(ω) = N·(C log ω + ω²/2); dF/dt = 1 along the flow dω/dt = ω/(N(C + ω²))."""
    return n * (c * np.log(omega) + 0.5 * omega**2)


def ode_snr_trajectory(omega0: np.ndarray, times: np.ndarray, num_classes: int,
                       num_samples: int) -> np.ndarray:
    """ω_j(t) of the renormalized gradient flow dω/dt = ω/(N(C + ω²)).

    Solves F(ω_j(t)) = F(ω_j(0)) + t (F increasing) by bisection in log ω, to machine
    precision. Returns an array of shape (len(times), len(omega0)).
    """
    omega0 = np.asarray(omega0, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if np.any(omega0 <= 0):
        raise ValueError("the ODE needs positive initial singular values ω_j(0)")
    target = _ode_invariant(omega0, num_classes, num_samples)[None, :] + times[:, None]
    lo = np.broadcast_to(np.log(omega0), target.shape).copy()
    # grow the upper end of the bracket until F(ω) passes the target
    hi = lo + 1.0
    for _ in range(200):
        short = _ode_invariant(np.exp(hi), num_classes, num_samples) < target
        if not short.any():
            break
        hi = np.where(short, hi + 1.0, hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = _ode_invariant(np.exp(mid), num_classes, num_samples) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.exp(0.5 * (lo + hi))


def initial_features(num_classes: int, per_class: int, dim: int, omega0: np.ndarray,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced features with Σ_W = I, μ_G = 0 and SNR singular values exactly ``omega0``."""
    c, n, d = num_classes, per_class, dim
    omega0 = np.asarray(omega0, dtype=np.float64)
    if omega0.shape != (c - 1,):
        raise ValueError(f"omega0 must have C − 1 = {c - 1} entries, got shape {omega0.shape}")
    if d < c - 1 or c * n - c < d:
        raise ValueError(
            f"need C − 1 ≤ d ≤ N − C (so Σ_W is invertible), got C={c}, d={d}, N={c * n}"
        )
    from ncollapse.geometry import helmert_basis, random_orthonormal

    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), n)
    z = rng.normal(size=(c * n, d))
    z -= _class_means(z, y, c)[y]
    z = z @ _whitener(z, y, np.zeros((c, d)))  # exactly Σ_W = I, class means 0
    u = random_orthonormal(d, c - 1, rng)  # feature directions
    v = helmert_basis(c) @ random_orthonormal(c - 1, c - 1, rng)  # ⟂ 1 in class space
    centred_means = (u * omega0) @ v.T  # d × C, columns μ_c, singular values omega0
    return z + centred_means.T[y], y


def renormalized_flow(features: Any, labels: Any, *, steps: int = 4000, rel_step: float = 2e-3,
                      num_records: int = 60, progress: bool = False) -> dict[str, Any]:
    """Gradient descent on the central-path loss with continual affine renormalisation.

    Each step: (1) renormalise H ← Σ_W^{-1/2}(H − μ_G); (2) take a gradient step
    H ← H − η·∇_H L_cp(H) with W = W_LS(H) (λ = 0); the loss is invariant to (1), so (1) only
    removes the scale the loss cannot see. η is chosen per step so that no ω_j moves by more
    than ``rel_step`` relatively (η = rel_step·N·(C + min_j ω_j²)); the time t = Σ η is the
    time of the continuous flow dω/dt = ω/(N(C + ω²)).

    Returns ``time``, ``omega`` (records × (C−1)), ``loss``, ``recurrence_omega`` (the exact
    discrete recurrence :func:`snr_recurrence` run from the same start with the same η),
    ``ode_omega`` (:func:`ode_snr_trajectory`), ``etf_distance`` (relative distance of the
    whitened class means to the nearest simplex ETF), ``features`` (the final, renormalised),
    ``labels`` and ``steps_taken``.
    """
    h, y, c = _prepare(features, labels, None, "the central-path flow")
    n = h.shape[0]
    if steps < 1 or not (0 < rel_step < 0.5):
        raise ValueError(f"need steps >= 1 and 0 < rel_step < 0.5, got {steps}, {rel_step}")
    record_at = set(np.unique(np.geomspace(1, steps, num_records).astype(int)).tolist())
    record_at.add(0)
    h = renormalize(h, y, c)
    omega_rec = snr_singular_values(h, y, c)
    from ncollapse.geometry import etf_distance

    times, omegas, losses, rec, etf = [], [], [], [], []
    t = 0.0
    iterator = range(steps + 1)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="central path", unit="step")
    for k in iterator:
        h = renormalize(h, y, c)
        if k in record_at:
            times.append(t)
            omegas.append(snr_singular_values(h, y, c))
            losses.append(central_path_loss(h, y, c))
            rec.append(omega_rec.copy())
            etf.append(etf_distance(_class_means(h, y, c)))
        if k == steps:
            break
        omega = np.sort(omega_rec)[::-1]
        eta = rel_step * n * (c + float(omega.min()) ** 2)
        h = h - eta * central_path_gradient(h, y, c)
        omega_rec = snr_recurrence(omega_rec, eta, c, n)
        t += eta
    times_a = np.array(times)
    omegas_a = np.array(omegas)
    return {
        "time": times_a,
        "omega": omegas_a,
        "loss": np.array(losses),
        "recurrence_omega": np.array(rec),
        "etf_distance": np.array(etf),
        "ode_omega": ode_snr_trajectory(omegas_a[0], times_a, c, n),
        "features": h,
        "labels": y,
        "steps_taken": steps,
    }


# ---------------------------------------------------------------------------- figures


def read_mse_decomposition(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Epochs and the four terms ``loss``, ``nc1``, ``nc2_3``, ``ls_perp`` from a run directory.

    Reads RUN_DIR/metrics.jsonl (docs/architecture.md); rows without ``mse_decomposition``
    (or with only an ``error`` entry, e.g. imbalanced classes) are skipped. Raises ValueError
    when no row has it (the run did not use the MSE loss).
    """
    from ncollapse.io import read_jsonl

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a run directory written by "
                                "`ncollapse train`")
    keys = ("loss", "nc1", "nc2_3", "ls_perp")
    rows = [r for r in read_jsonl(path) if isinstance(r.get("mse_decomposition"), dict)
            and all(k in r["mse_decomposition"] for k in keys)]
    if not rows:
        raise ValueError(
            f"{path} has no 'mse_decomposition' entries: the decomposition is recorded only "
            "for runs trained with the MSE loss (train with --loss mse)"
        )
    out = {"epoch": np.array([float(r["epoch"]) for r in rows])}
    for key in keys:
        out[key] = np.array([
            np.nan if r["mse_decomposition"].get(key) is None
            else float(r["mse_decomposition"][key]) for r in rows
        ])
    return out


def plot_mse_decomposition(run_dir: str | Path, out_path: str | Path) -> Path:
    """Plot L, L_NC1, L_NC2/3 and L_LS⊥ over the epochs of an MSE run; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncollapse.io import atomic_savefig

    data = read_mse_decomposition(run_dir)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    styles = [("loss", "total loss L", "k", "-"), ("nc1", "L_NC1 (within-class)", "C0", "-"),
              ("nc2_3", "L_NC2/3 (W_LS·means + b_LS vs I)", "C1", "-"),
              ("ls_perp", "L_LS⊥ (off central path)", "C3", "--")]
    for key, label, color, ls in styles:
        vals = np.where(data[key] > 0, data[key], np.nan)
        ax.plot(data["epoch"], vals, ls, color=color, marker="o", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss term (train set)")
    ax.set_title(f"MSE loss decomposition [Han et al. 2022]\n{_run_label(run_dir)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_path = atomic_savefig(fig, out_path, format="png")
    plt.close(fig)
    return out_path


def _run_label(run_dir: str | Path) -> str:
    """"dataset, model, optimizer lr …, weight decay …" from RUN_DIR/config.toml, else the name."""
    path = Path(run_dir) / "config.toml"
    try:
        from ncollapse.config import read_toml

        cfg = read_toml(path)  # flat: sections merged
        return (f"{cfg['dataset']}, {cfg['model']}, {cfg.get('optimizer', '')} "
                f"lr {cfg.get('lr', '?')}, weight decay {cfg.get('weight_decay', '?')}")
    except (OSError, KeyError, ValueError, ImportError, TypeError):
        return Path(run_dir).name


def plot_central_path(flow: dict[str, Any], out_path: str | Path) -> Path:
    """Two panels: ω_j(t) (simulation vs ODE) and their spread / the loss, log time axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncollapse.io import atomic_savefig

    t, om, ode = flow["time"], flow["omega"], flow["ode_omega"]
    keep = t > 0
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), dpi=100)
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
    ax.grid(True, which="both", alpha=0.3)
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
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    c = om.shape[1] + 1
    n = flow["features"].shape[0]
    fig.suptitle(f"Renormalized gradient flow on the central path (C={c}, N={n}, λ=0)",
                 fontsize=11)
    fig.tight_layout()
    out_path = atomic_savefig(fig, out_path, format="png")
    plt.close(fig)
    return out_path


# ---------------------------------------------------------------------------- CLI


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Flags of ``ncollapse theory central-path``."""
    from ncollapse.commands.theory import add_common_arguments

    add_common_arguments(p, classes=4, per_class=20, dim=6, lambda_w=0.0)
    g = p.add_argument_group("central path")
    g.add_argument("--steps", type=int, default=4000, help="renormalized gradient steps")
    g.add_argument("--rel-step", type=float, default=2e-3,
                   help="largest relative change of any ω_j per step (sets η)")
    g.add_argument("--omega-min", type=float, default=0.2, help="smallest initial ω_j")
    g.add_argument("--omega-max", type=float, default=3.0, help="largest initial ω_j")
    g.add_argument("--run", type=Path, default=None, metavar="RUN_DIR",
                   help="also plot the MSE decomposition over the epochs of this MSE run")


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    """``ncollapse theory central-path``: flow, checks against the exact dynamics, figures."""
    from ncollapse import measure

    c, n, d = args.classes, args.per_class, args.dim
    run_data = read_mse_decomposition(args.run) if args.run is not None else None  # fail early
    start = time.perf_counter()
    omega0 = np.geomspace(args.omega_max, args.omega_min, c - 1)
    h0, y = initial_features(c, n, d, omega0, seed=args.seed)
    flow = renormalized_flow(h0, y, steps=args.steps, rel_step=args.rel_step, progress=True)
    elapsed = time.perf_counter() - start
    h = flow["features"]
    omega = flow["omega"][-1]
    closed = 0.5 * float(np.sum(1.0 / (c + omega**2)))
    dec = mse_decomposition(h, y, np.zeros((c, d)), None, 0.0)
    objective = dec["nc1"] + dec["nc2_3"]
    rec_err = float(np.max(np.abs(flow["omega"] / np.sort(flow["recurrence_omega"], axis=1)[:, ::-1]
                                  - 1.0)))
    ode_err = float(np.max(np.abs(flow["omega"] / flow["ode_omega"] - 1.0)))
    rng = np.random.default_rng(args.seed + 1)
    a = rng.normal(size=(d, d))
    inv_err = abs(central_path_loss(h0 @ a.T + rng.normal(size=d), y, c)
                  - central_path_loss(h0, y, c))
    metrics = measure(h, y, weight=dec["weight_ls"], bias=dec["bias_ls"], num_classes=c)
    from ncollapse.geometry import etf_distance

    means = _class_means(h, y, c)
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
    figures: list[str] = []
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
    if not args.no_figures:
        figures.append(str(plot_central_path(flow, args.out / "central-path-flow.png")))
        if args.run is not None:
            figures.append(str(plot_mse_decomposition(args.run,
                                                      args.out / "mse-decomposition.png")))
    result["summary"] = summary
    result["figures"] = figures
    return result
