"""Pairwise statistics of class vectors (centred means, classifier rows), in tiles.

Every statistic over pairs c < c' is accumulated block by block of the Gram matrix (float64,
upper triangle only), so memory is O(C d + tile^2) at any C and time O(C^2 d). Blocks have at
most ``min(tile, PAIR_TILE)`` rows, whatever the caller's ``tile`` (which bounds memory): the
elementwise passes over a small block cost little next to the product that made it. Each
block of G = X_i X_j^T is reduced in place, in fixed buffers, into what the statistics need;
the cosines are G scaled by the reciprocal norms of its rows and columns.

Accuracy of the sums over pairs (all float64):

- Cosines: the mean over pairs has the closed form mu = (||sum u||^2 - sum ||u||^2)/(C(C-1)),
  exact up to rounding (an absolute error of a few eps/C), computed before the pass. The blocks
  accumulate S1 = sum (cos - mu) and S2 = sum (cos - mu)^2; the sum of squared deviations is
  S2 - S1^2/P over the P pairs. As mu is the mean, S1^2/P is at the rounding level of the
  cosines and S2 has no cancellation, whatever the mean cosine (near -1/(C-1) at an ETF,
  near 1 with a large common component).
- Max-angle: sum |cos + 1/(C-1)| = S1 - P b - 2 sum min(cos - mu, -b) with b = mu + 1/(C-1).
  The result is >= P |b| (triangle inequality), so sum |cos - mu| <= result + P |b| <= 2 result
  and every term is at most three times the result: no cancellation.
- Log energy: log(1 - cos) per block, then the block's mean and sum of squared deviations
  about it (two passes over the cached block), merged across blocks with Chan's formula
  (exact). A non-finite value (1 - cos rounded to <= 0 for coincident directions, NaN for a
  zero row) is counted, not merged, and makes the energy and its variance infinite.
- ETF Gram error in one pass: with the target T = (I - 11^T/C)/sqrt(C-1) (unit norm) and
  s = <G, T> = (tr G - 1^T G 1 / C)/sqrt(C-1) (an O(C d) quantity), A = ||G - sT||_F^2,
  ||G||_F^2 = s^2 + A and ||G/||G|| - T||^2 = 2A / (g (g + s)) for s > 0 (else 2 - 2 s / g),
  g = ||G||_F: no cancellation even when G is nearly an ETF. For C - 1 <= d, A is summed per
  pair from G - sT. For C - 1 > d, G (positive semidefinite, rank r <= d) is far from T:
  s <= tr G / sqrt(C-1) <= sqrt(r/(C-1)) g, so A = g^2 - s^2 >= g^2 (C-1-d)/(C-1) and A comes
  from g^2 = sum of squares of G (or of d x d matrices for ``cross_etf_error``) with its
  relative error amplified by at most (C-1)/(C-1-d) <= d + 1.
- Distances ||x_c - x_c'||^2 = ||x_c||^2 + ||x_c'||^2 - 2 g (clamped at 0), as throughout the
  package; per-row sums and minima are plain float64 reductions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PairStats", "pairwise_stats", "cross_etf_error", "cdnv", "DEFAULT_TILE",
           "PAIR_TILE"]

_F64 = torch.float64
DEFAULT_TILE = 2048
PAIR_TILE = 512  # most rows of a pairwise block (2 MiB in float64, about a core's L2 cache)


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
    tr = float(torch.dot(x.reshape(-1), y.reshape(-1)))
    ones = torch.ones(c, dtype=x.dtype, device=x.device)
    return (tr - float((ones @ x) @ (ones @ y)) / c) / math.sqrt(c - 1)


_LOWER: dict[tuple[int, str], torch.Tensor] = {}


def _lower(n: int, device: torch.device) -> torch.Tensor:
    """(n, n) bool mask of the diagonal and below: the entries of a diagonal block that are
    not pairs c < c'."""
    key = (n, str(device))
    if key not in _LOWER:
        _LOWER[key] = torch.ones(n, n, dtype=torch.bool, device=device).tril_()
    return _LOWER[key]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.view(-1)


def _block(buf: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """A contiguous (rows, cols) view of the start of a flat buffer."""
    return buf[:rows * cols].view(rows, cols)


class _Sum:
    """A compensated (Neumaier) sum of Python floats: one term per block, any number of blocks."""

    __slots__ = ("total", "comp")

    def __init__(self) -> None:
        self.total, self.comp = 0.0, 0.0

    def add(self, v: float) -> None:
        t = self.total + v
        if abs(self.total) >= abs(v):
            self.comp += (self.total - t) + v
        else:
            self.comp += (v - t) + self.total
        self.total = t

    @property
    def value(self) -> float:
        return self.total + self.comp


class _PairSums:
    """Sums over the pairs of the blocks (module docstring)."""

    def __init__(self, mu: float, c: int) -> None:
        self.b = mu + 1.0 / (c - 1)
        self.s1, self.s2, self.low = _Sum(), _Sum(), _Sum()
        self.en_n, self.en_mean, self.en_m2, self.en_bad = 0, 0.0, 0.0, 0

    def add(self, r: torch.Tensor, q: torch.Tensor, lower: torch.Tensor | None) -> None:
        """Add the pairs of a block: ``r`` = cos - mu, ``q`` = 1 - cos (both overwritten);
        ``lower`` masks the entries of a diagonal block that are not pairs."""
        if lower is not None:
            r.masked_fill_(lower, 0.0)
        rf = _flat(r)
        self.s1.add(float(rf.sum()))
        self.s2.add(float(torch.dot(rf, rf)))
        z = q.log_()  # log(1 - cos)
        if lower is not None:
            z.masked_fill_(lower, 0.0)
        self._add_logs(z, lower)
        rf.clamp_(max=-self.b)
        if lower is not None:
            r.masked_fill_(lower, 0.0)
        self.low.add(float(rf.sum()))

    def _add_logs(self, z: torch.Tensor, lower: torch.Tensor | None) -> None:
        nb = z.numel() if lower is None else z.shape[0] * (z.shape[0] - 1) // 2
        zs = float(z.sum())
        if not math.isfinite(zs):  # count the non-finite values, merge the others
            z = _flat(z) if lower is None else z[~lower]
            ok = torch.isfinite(z)
            self.en_bad += z.numel() - int(ok.sum())
            z, lower = z[ok], None
            nb, zs = z.numel(), float(z.sum())
        if nb == 0:
            return
        mb = zs / nb
        z.sub_(mb)
        if lower is not None:
            z.masked_fill_(lower, 0.0)
        zf = _flat(z)
        m2b = float(torch.dot(zf, zf))
        n = self.en_n + nb
        delta = mb - self.en_mean
        self.en_mean += delta * nb / n
        self.en_m2 += m2b + delta * delta * self.en_n * nb / n
        self.en_n = n


def pairwise_stats(x: torch.Tensor, tile: int = DEFAULT_TILE, *,
                   distances: bool = False) -> PairStats:
    """Pairwise statistics of the rows of ``x`` (float64, C >= 2), in blocks of at most
    ``min(tile, PAIR_TILE)`` rows.

    ``distances``: also, per row, the sum over the other rows of 1/||x_c - x_c'||^2 (CDNV is
    then sum_c sigma_c^2 inv_dist_c / (2P) over the P pairs, see ``cdnv``) and the squared
    distance to the nearest other row.
    """
    c, d = x.shape
    dev = x.device
    step = max(1, min(int(tile), PAIR_TILE))
    norms = torch.linalg.vector_norm(x, dim=1)
    nsq = norms * norms
    equinorm = float(norms.std() / norms.mean())
    rn = norms.reciprocal()
    usum = rn @ x  # sum of the unit rows
    mu = (float(usum @ usum) - float(nsq @ (rn * rn))) / (c * (c - 1))
    neg_mu = torch.tensor(-mu, dtype=_F64, device=dev)
    one_minus_mu = torch.tensor(1.0 - mu, dtype=_F64, device=dev)
    s = _etf_s(x, x, c)
    per_pair = c - 1 <= d  # else A = ||G||^2 - s^2 (module docstring)
    off_t = -s / (c * math.sqrt(c - 1))  # s * T_ij for i != j
    diag_t = s * (1.0 - 1.0 / c) / math.sqrt(c - 1)
    a = float(((nsq - diag_t) ** 2).sum()) if per_pair else 0.0
    gsq = 0.0
    sums = _PairSums(mu, c)
    near = torch.full((c,), math.inf, dtype=_F64, device=dev) if distances else None
    inv = torch.zeros(c, dtype=_F64, device=dev) if distances else None
    ones = torch.ones(step, dtype=_F64, device=dev)
    gbuf, wbuf = (torch.empty(step * step, dtype=_F64, device=dev) for _ in range(2))
    for i0 in range(0, c, step):
        i1 = min(c, i0 + step)
        bi = i1 - i0
        for j0 in range(i0, c, step):
            j1 = min(c, j0 + step)
            bj = j1 - j0
            lower = _lower(bi, dev) if i0 == j0 else None
            g = torch.mm(x[i0:i1], x[j0:j1].T, out=_block(gbuf, bi, bj))
            w = _block(wbuf, bi, bj)
            if per_pair:
                e = torch.sub(g, off_t, out=w)
                if lower is not None:
                    e.masked_fill_(lower, 0.0)
                a += 2.0 * float(torch.dot(_flat(e), _flat(e)))
            else:  # a diagonal block holds both triangles of G and its diagonal
                gsq += (2.0 if lower is None else 1.0) * float(torch.dot(_flat(g), _flat(g)))
            if distances:
                dsq = torch.add(nsq[i0:i1, None], nsq[None, j0:j1], out=w).add_(g, alpha=-2.0)
                if lower is not None:
                    dsq.masked_fill_(lower, math.inf)
                torch.minimum(near[i0:i1], dsq.amin(1), out=near[i0:i1])
                torch.minimum(near[j0:j1], dsq.amin(0), out=near[j0:j1])
                rec = dsq.reciprocal_()  # rows with a distance <= 0 are set to inf below
                inv[i0:i1].addmv_(rec, ones[:bj])
                inv[j0:j1].addmv_(rec.T, ones[:bi])
            r = torch.addcmul(neg_mu, g.mul_(rn[i0:i1, None]), rn[None, j0:j1], out=g)
            sums.add(r, torch.sub(one_minus_mu, r, out=w), lower)  # cos - mu, 1 - cos
    if distances:
        near.clamp_(min=0.0)
        inv[near == 0.0] = math.inf
    if not per_pair:
        a = max(gsq - s * s, 0.0)
    pairs = c * (c - 1) // 2
    s1, s2 = sums.s1.value, sums.s2.value
    m2 = max(s2 - s1 * s1 / pairs, 0.0)
    equiang = math.sqrt(m2 / (pairs - 1)) if pairs > 1 else None
    maxangle = math.fsum((s1, -pairs * sums.b, -2.0 * sums.low.value)) / pairs
    if sums.en_bad:
        energy, energy_var = math.inf, math.inf
    else:  # log(1/||u - u'||) = -log(2)/2 - log(1 - cos)/2
        energy = -0.5 * math.log(2.0) - 0.5 * sums.en_mean
        energy_var = 0.25 * sums.en_m2 / pairs
    return PairStats(
        equinorm=equinorm, equiangular=equiang, maxangle=maxangle,
        etf_error=etf_from_parts(a, s), energy=energy, energy_var=energy_var,
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
