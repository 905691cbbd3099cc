"""Pairwise statistics of class vectors (centred means, classifier rows), in tiles.

Every statistic over pairs c < c' is accumulated tile by tile (a ``tile x tile`` block of the
Gram matrix at a time, float64), so memory is O(C d + tile^2) at any C and time O(C^2 d).
Means and variances over pairs are combined across tiles with Chan's formula (exact, no
cancellation); the ETF Gram error uses the identity below so that one pass over the tiles
suffices.

ETF Gram error in one pass: with the target T = (I - 11^T/C)/sqrt(C-1) (unit norm) and
s = <G, T> = (tr G - 1^T G 1 / C)/sqrt(C-1) (an O(C d) quantity), A = ||G - sT||_F^2 is a
sum of squares over the tiles, ||G||_F^2 = s^2 + A, and
||G/||G|| - T||^2 = 2A / (g (g + s)) for s > 0 (else 2 - 2 s / g), g = ||G||_F:
no cancellation even when G is nearly an ETF.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PairStats", "pairwise_stats", "cross_etf_error", "cdnv", "DEFAULT_TILE"]

_F64 = torch.float64
DEFAULT_TILE = 2048


class _Moments:
    """Count, mean and centred sum of squares of a stream of blocks (Chan's merge, float64).

    Infinite values (coincident unit vectors in the log kernel) make the mean and the
    variance infinite; they are counted, not merged.
    """

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.infinite = 0, 0.0, 0.0, 0

    def result(self) -> tuple[float, float]:
        """Mean and sum of squared deviations (-inf, inf with an infinite value)."""
        return (-math.inf, math.inf) if self.infinite else (self.mean, self.m2)

    @staticmethod
    def squares_about(x: torch.Tensor, center: float) -> float:
        """sum (x - center)^2 without cancellation: m2 + n (mean - center)^2."""
        if x.numel() == 0:
            return 0.0
        var, mean = torch.var_mean(x, correction=0)
        return float(var) * x.numel() + x.numel() * (float(mean) - center) ** 2

    def add(self, x: torch.Tensor) -> None:
        nb = x.numel()
        if nb == 0:
            return
        var, mb = torch.var_mean(x, correction=0)
        mb, m2b = float(mb), float(var) * nb
        if not math.isfinite(mb) or not math.isfinite(m2b):
            bad = ~torch.isfinite(x)
            self.infinite += int(bad.sum())
            x = x[~bad]
            nb = x.numel()
            if nb == 0:
                return
            var, mb = torch.var_mean(x, correction=0)
            mb, m2b = float(mb), float(var) * nb
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n


@dataclass
class PairStats:
    """Statistics of the rows x_c of a (C, d) matrix (see docs/metrics.md for each)."""

    equinorm: float
    equiangular: float | None  # std (ddof 1) of the pair cosines; None for one pair
    maxangle: float  # mean |cos + 1/(C-1)|
    etf_error: float
    energy: float  # mean over pairs of log(1/||u_c - u_c'||), u = x / ||x||
    energy_var: float  # its variance over pairs (ddof 0)
    inv_dist: torch.Tensor | None = None  # with ``distances``: sum_c' 1/||x_c - x_c'||^2
    nearest_sq: torch.Tensor | None = None  # with ``distances``: min_c' ||x_c - x_c'||^2


def etf_from_parts(a: float, s: float) -> float:
    """||G/||G|| - T||_F from A = ||G - sT||^2 and s = <G, T> (module docstring)."""
    g = math.sqrt(s * s + a)
    if g == 0.0:
        return math.nan
    if s > 0:
        return math.sqrt(2.0 * a / (g * (g + s)))
    return math.sqrt(max(0.0, 2.0 - 2.0 * s / g))


def _etf_s(x: torch.Tensor, y: torch.Tensor, c: int) -> float:
    """<X Y^T, T> = (sum_c x_c.y_c - (sum x).(sum y)/C)/sqrt(C-1)."""
    tr = float(torch.linalg.vecdot(x, y).sum())
    return (tr - float(x.sum(0) @ y.sum(0)) / c) / math.sqrt(c - 1)


_TRIU: dict[tuple[int, str], torch.Tensor] = {}


def _triu(n: int, device: torch.device) -> torch.Tensor:
    key = (n, str(device))
    if key not in _TRIU:
        _TRIU[key] = torch.triu_indices(n, n, offset=1, device=device)
    return _TRIU[key]


def pairwise_stats(x: torch.Tensor, tile: int = DEFAULT_TILE, *,
                   distances: bool = False) -> PairStats:
    """Pairwise statistics of the rows of ``x`` (float64, C >= 2), tile by tile.

    ``distances``: also, per row, the sum over the other rows of 1/||x_c - x_c'||^2 (CDNV is
    then sum_c sigma_c^2 inv_dist_c / (2P) over the P pairs, see ``cdnv``) and the squared
    distance to the nearest other row.
    """
    c = x.shape[0]
    dev = x.device
    norms = torch.linalg.vector_norm(x, dim=1)
    nsq = norms * norms
    equinorm = float(norms.std() / norms.mean())
    s = _etf_s(x, x, c)
    off_t = -s / (c * math.sqrt(c - 1))  # s * T_ij for i != j
    diag_t = s * (1.0 - 1.0 / c) / math.sqrt(c - 1)
    a = float(((nsq - diag_t) ** 2).sum())
    inv_c1 = torch.tensor(-1.0 / (c - 1), dtype=_F64, device=dev)
    cos_m, en_m = _Moments(), _Moments()
    maxangle = 0.0
    near = torch.full((c,), math.inf, dtype=_F64, device=dev) if distances else None
    inv = torch.zeros(c, dtype=_F64, device=dev) if distances else None
    for i0 in range(0, c, tile):
        i1 = min(c, i0 + tile)
        for j0 in range(i0, c, tile):
            j1 = min(c, j0 + tile)
            g = x[i0:i1] @ x[j0:j1].T
            diag = i0 == j0
            if distances:
                dsq = torch.add(nsq[i0:i1, None], g, alpha=-2.0).add_(nsq[None, j0:j1])
                dsq.clamp_(min=0.0)
                if diag:
                    dsq.fill_diagonal_(math.inf)
                near[i0:i1] = torch.minimum(near[i0:i1], dsq.amin(1))
                near[j0:j1] = torch.minimum(near[j0:j1], dsq.amin(0))
                rec = dsq.reciprocal_()
                inv[i0:i1] += rec.sum(1)
                if not diag:
                    inv[j0:j1] += rec.sum(0)
            if diag:  # the pairs c < c' of a diagonal tile
                iu = _triu(i1 - i0, dev)
                pg = g[iu[0], iu[1]]
            else:
                pg = g
            a += 2.0 * _Moments.squares_about(pg, off_t)
            if diag:
                pc = pg.div_(norms[i0 + iu[0]]).div_(norms[i0 + iu[1]])
            else:
                pc = pg.div_(norms[i0:i1, None]).div_(norms[None, j0:j1])
            cos_m.add(pc)
            maxangle += float(torch.dist(pc, inv_c1, p=1))
            # log(1/||u - u'||) = -log(2)/2 - log1p(-cos)/2, reduced as log1p(-cos)
            en_m.add(pc.neg_().log1p_())
    pairs = c * (c - 1) // 2
    equiang = math.sqrt(cos_m.m2 / (pairs - 1)) if pairs > 1 else None
    log1p_mean, log1p_m2 = en_m.result()
    energy, energy_m2 = -0.5 * math.log(2.0) - 0.5 * log1p_mean, 0.25 * log1p_m2
    return PairStats(
        equinorm=equinorm, equiangular=equiang, maxangle=maxangle / pairs,
        etf_error=etf_from_parts(a, s), energy=energy, energy_var=energy_m2 / pairs,
        inv_dist=inv, nearest_sq=near)


def cdnv(spread: torch.Tensor, inv_dist: torch.Tensor) -> float:
    """CDNV = mean over pairs c < c' of (s_c + s_c') / (2 ||mu_c - mu_c'||^2)
    = sum_c s_c inv_dist_c / (C (C - 1)), s = per-class sigma^2 (``PairStats.inv_dist``)."""
    c = spread.numel()
    return float((spread * inv_dist).sum()) / (c * (c - 1))


def cross_etf_error(w: torch.Tensor, m: torch.Tensor, tile: int = DEFAULT_TILE) -> float:
    """ETF Gram error of G = W M^T (rows of ``w`` and ``m``, float64, same C).

    For C - 1 > d the Gram matrix has rank < C - 1, so it is far from the target and
    A = ||W^T W . M^T M|| - s^2 is computed from d x d matrices without loss of accuracy;
    otherwise A is summed over tiles of G.
    """
    c, d = w.shape
    s = _etf_s(w, m, c)
    if c - 1 > d:
        gsq = float(((w.T @ w) * (m.T @ m)).sum())
        return etf_from_parts(max(gsq - s * s, 0.0), s)
    off_t = -s / (c * math.sqrt(c - 1))
    diag_t = s / math.sqrt(c - 1)  # the diagonal of s T is s (1 - 1/C)/sqrt(C-1) = off_t + this
    a = 0.0
    for i0 in range(0, c, tile):
        i1 = min(c, i0 + tile)
        for j0 in range(0, c, tile):
            j1 = min(c, j0 + tile)
            g = (w[i0:i1] @ m[j0:j1].T).sub_(off_t)
            if i0 == j0:
                g.diagonal().sub_(diag_t)
            a += float(g.square_().sum())
    return etf_from_parts(a, s)
