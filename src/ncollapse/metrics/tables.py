"""Typed working tables: the classifier, the class-mean statistics, the frozen pass-2 tables.

All are derived from the accumulator's state (deterministically) and never saved: a restored
state rebuilds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ncollapse import validation as V
from ncollapse.metrics.kernels import spectrum
from ncollapse.metrics.pairwise import PairStats, pairwise_stats

__all__ = ["Classifier", "MeanStats", "Pass2Tables", "mean_stats", "build_pass2"]

_F64 = torch.float64


@dataclass
class Classifier:
    """The last layer: W (C, d) and b (C,) in float64, W^T in the compute dtype."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    wt: torch.Tensor  # (d, C), compute dtype, a transposed row-major (C, d) copy
    wmax: float  # max_c ||w_c||
    _pairs: dict[bytes, PairStats] = field(default_factory=dict)

    @classmethod
    def make(cls, weight: torch.Tensor, bias: torch.Tensor | None, ct: torch.dtype
             ) -> Classifier:
        """From checked float64 weight and bias."""
        return cls(weight, bias, weight.to(ct).contiguous().T,
                   float(torch.linalg.vector_norm(weight, dim=1).max()))

    def offsets(self, g: torch.Tensor) -> torch.Tensor:
        """W g + b (float64) for a reference point g (float64)."""
        t = self.weight @ g
        return t if self.bias is None else t + self.bias

    def offsets_at(self, points: torch.Tensor) -> torch.Tensor:
        """(n, C) float64: row i is W p_i + b for the rows p_i of ``points`` (float64)."""
        t = points @ self.weight.T
        return t if self.bias is None else t + self.bias

    def pair_stats(self, sel: torch.Tensor | slice, tile: int) -> PairStats:
        """Pairwise statistics of the rows ``sel`` (cached per selection)."""
        key = b"all" if isinstance(sel, slice) else sel.cpu().numpy().tobytes()
        if key not in self._pairs:
            self._pairs[key] = pairwise_stats(self.weight[sel], tile)
        return self._pairs[key]


@dataclass
class MeanStats:
    """Class means and what depends on them alone (float64, present classes only)."""

    present: torch.Tensor  # (cp,) ids of the classes with samples
    sel: torch.Tensor | slice  # selects the present rows of a (C, ...) table
    cp: int
    n: torch.Tensor  # (cp,) counts
    total: int
    mt: torch.Tensor  # (cp, d) centred class means mu_c - mu_G
    mu_g: torch.Tensor  # (d,) global mean
    pairs: PairStats  # of the rows of mt, with distances

    shift: torch.Tensor  # (cp, d) the class shifts (views of the state when all are present)
    sums: torch.Tensor  # (cp, d) sums of h - shift

    def means(self) -> torch.Tensor:
        """(cp, d) class means shift + sums / n (exactly a sample when a class is constant)."""
        return self.shift + self.sums / self.n[:, None]


def mean_stats(shift: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, tile: int
               ) -> MeanStats:
    """Means from shifted sums; centred on the first present class's shift (no digits lost
    to a large common offset)."""
    present = torch.nonzero(counts > 0).flatten()
    cp = int(present.numel())
    V.require_two_classes(cp)
    sel = slice(None) if cp == counts.shape[0] else present  # views when all are present
    n = counts[sel].to(_F64)
    total = int(counts.sum())
    sh = shift[sel]
    m = sums[sel] / n[:, None]
    a = (sh - sh[0]) + m
    a_g = (n[:, None] * a).sum(0) / total
    mt = a - a_g
    del a, m
    return MeanStats(present, sel, cp, n, total, mt, sh[0] + a_g,
                     pairwise_stats(mt, tile, distances=True), sh, sums[sel])


@dataclass
class Pass2Tables:
    """Everything pass 2 reads, frozen at ``begin_second_pass()``.

    Pass 2 works with x = h - a_y, a = the class means rounded to the compute dtype
    (``anchor``); e = mu - a is tiny and enters through exact per-class corrections. NC1 uses
    the scaled projections x V S^-1 (V, S: right singular vectors and values of M~);
    nearest-centre scores over class tiles use t = (h - g) V = x V + A_y with g = mu_G
    rounded, A = (a - g) V, or (with the logits, in one product) the scores of h - g against
    the means themselves.
    """

    stats: MeanStats
    pos: torch.Tensor  # (C,) position among the present classes, -1 if absent
    anchor: torch.Tensor  # (C, d) compute dtype (absent rows zero)
    k: int  # singular directions kept
    vs_t: torch.Tensor | None  # (d, k) compute dtype V S^-1: NC1's projections (not scatter)
    s_ct: torch.Tensor  # (k,) compute dtype, S
    s: torch.Tensor  # (k,) float64
    s_drop: float
    nc1_corr: torch.Tensor  # (C,) ||e_c V / s||^2
    ss_corr: torch.Tensor  # (C,) ||e_c||^2
    g: torch.Tensor  # (d,) compute dtype: mu_G rounded
    ag_norm: torch.Tensor  # (C,) compute dtype: ||a_c - g|| (1 + 1e-5), rounded up
    radius: torch.Tensor | None  # (C,) compute dtype: ||proj|| below it => nearest is own
    a_table: torch.Tensor | None  # (C, k) compute dtype: (a - g) V
    su_t: torch.Tensor | None  # (k, cp) compute dtype: -2 (M~ V)^T
    q: torch.Tensor | None  # (cp,) compute dtype: ||mu_c - g||^2
    q64: torch.Tensor | None  # (cp,) float64: ||mt_c||^2
    su_max: float
    q_max: float
    tol: float
    mt_m2: torch.Tensor | None = None  # -2 M~^T (or -2 (nu - g)^T), float64, built on first use
    scatter: bool = False  # NC1 from sum x x^T (k close to d) instead of per-row projections
    v_t: torch.Tensor | None = None  # (d, k) compute dtype V: projections of open rows (scatter)
    v64: torch.Tensor | None = None  # (d, k) float64 V
    fused: object | None = None  # updates._Fused, built on first use (few classes)
    joint: object | None = None  # updates._Joint (or False: not worth it), built on first use
    cert: object | None = None  # certify.Certifier, built on first use (with a classifier)
    low: dict = field(default_factory=dict)  # kernels.LowPrecision scores, built on first use
    # given centres nu (ncc_means)
    nu_t: torch.Tensor | None = None  # (d, C) compute dtype: -2 (nu - g)^T
    nu_q: torch.Tensor | None = None  # (C,) compute dtype: ||nu_c - g||^2
    nu64: torch.Tensor | None = None  # (C, d) float64: nu - g
    nu_max: float = 0.0

    def release(self) -> None:
        """Drop the working copies built during pass 2 (fused and joint tables,
        certification radii, bfloat16 scores); the statistics stay."""
        self.low.clear()
        self.cert = self.fused = self.joint = None


def build_pass2(stats: MeanStats, num_classes: int, ct: torch.dtype,
                ncc_means: torch.Tensor | None, tol: float, scatter_ok: bool = True
                ) -> Pass2Tables:
    """The frozen tables for pass 2 from the pass-1 means (see ``Pass2Tables``); ``tol`` is
    the relative rounding bound of the decisions (0: no float64 re-check).

    When k > 0.6 d (and ``scatter_ok``, and float64 compute: float32 x x^T sums lose the small
    directions of Sigma_W to rounding), NC1 comes from the d x d sum of x x^T, built from
    upper blocks (about 0.6 N d^2 multiply-adds instead of N d k for the projections), and the
    nearest-centre test uses ||x|| >= ||V^T x||: projections only for the rows it leaves open.
    """
    dev, c = stats.mt.device, num_classes
    d = stats.mt.shape[1]
    v, s, s_drop = spectrum(stats.mt, torch.finfo(ct).eps)
    mu = stats.means()
    anchor = torch.zeros(c, d, dtype=ct, device=dev)
    anchor[stats.sel] = mu.to(ct)
    e = torch.zeros(c, d, dtype=_F64, device=dev)
    e[stats.sel] = mu.sub_(anchor[stats.sel])
    del mu
    ev = e @ v
    pos = torch.full((c,), -1, dtype=torch.int64, device=dev)
    pos[stats.sel] = torch.arange(stats.cp, device=dev)
    g = stats.mu_g.to(ct)
    g64 = g.to(_F64)
    scatter = scatter_ok and ct == _F64 and v.shape[1] > 0.6 * d
    tab = Pass2Tables(
        stats=stats, pos=pos, anchor=anchor, k=int(v.shape[1]),
        vs_t=None if scatter else (v / s).to(ct), s_ct=s.to(ct), s=s, s_drop=s_drop,
        nc1_corr=((ev / s) ** 2).sum(1),
        ss_corr=torch.linalg.vecdot(e, e), g=g,
        ag_norm=(torch.linalg.vector_norm(anchor.to(_F64) - g64, dim=1) * (1 + 1e-5)).to(ct),
        radius=None, a_table=None, su_t=None, q=None,
        q64=None, su_max=0.0, q_max=0.0, tol=tol,
        scatter=scatter, v_t=v.T.to(ct).contiguous().T if scatter else None, v64=v)
    if ncc_means is None:
        su = stats.mt @ v  # (cp, k)
        rho = stats.pairs.nearest_sq.sqrt()
        radius = torch.zeros(c, dtype=_F64, device=dev)
        radius[stats.sel] = 0.5 * (1 - 1e-3) * rho - 2.0 * s_drop - ev[stats.sel].norm(dim=1)
        tab.radius = radius.to(ct)
        tab.su_t = (-2.0 * su).to(ct).contiguous().T
        tab.su_max = float(torch.linalg.vector_norm(su, dim=1).max())
        tab.a_table = torch.zeros(c, v.shape[1], dtype=ct, device=dev)
        tab.a_table[stats.sel] = su.sub_(ev[stats.sel]).add_((stats.mu_g - g64) @ v).to(ct)
        del su
        delta = stats.mu_g - g64  # ||mt_c + delta||^2 without a C x d temporary
        tab.q64 = torch.linalg.vecdot(stats.mt, stats.mt)
        tab.q = (tab.q64 + 2.0 * (stats.mt @ delta) + delta @ delta).to(ct)
        tab.q_max = float(tab.q.abs().max())
    else:
        nu = ncc_means - g64
        tab.nu64 = nu
        tab.nu_t = (-2.0 * nu).to(ct).contiguous().T
        tab.nu_q = (nu * nu).sum(1).to(ct)
        tab.nu_max = float(torch.linalg.vector_norm(nu, dim=1).max())
        tab.q_max = float(tab.nu_q.abs().max())
    return tab
