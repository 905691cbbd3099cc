"""Numeric kernels of the metrics: chunk sizes, class means, spectrum, decisions over class tiles.

Decisions (argmax of classifier scores, argmin of distances) are taken over tiles of classes
in the compute dtype, keeping the best and second-best score of each row; rows whose two best
scores are within rounding of each other are decided again in float64 (``checked_best``), so
the decisions equal those of a float64 computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["class_means", "compute_dtype", "chunk_rows", "gather_sub", "spectrum",
           "tiled_best", "checked_best", "checked_scores", "decision_tol", "dist_active",
           "class_tile", "LowPrecision", "fast_low_precision", "Head", "joint_best"]

_F64 = torch.float64
_CHUNK_ELEMS = 1 << 18  # float32 feature elements per chunk (1 MiB)
_BULK_ELEMS = 1 << 19  # float32 feature elements per operation in the few-class paths
_SCORE_ELEMS = 1 << 23  # score elements per (rows x class tile) block (32 MiB in float32)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs are measured in float64, every other dtype in float32."""
    return _F64 if dtype == _F64 else torch.float32


def chunk_rows(dim: int, cols: int = 0) -> int:
    """Rows per chunk: about a MiB of features (cache-sized elementwise work), and enough
    rows for an efficient matrix product with ``cols`` columns."""
    rows = _CHUNK_ELEMS // max(1, dim)
    if cols >= 512:
        rows = max(rows, 1024)
    return max(64, min(8192, rows))


def bulk_rows(dim: int, step: int, n: int) -> int:
    """Rows per operation for narrow work (few classes): about 2 MiB of float32 features,
    a multiple of ``step``, so that per-operation overhead stays small."""
    rows = max(step, (_BULK_ELEMS // max(1, dim)) // step * step)
    return min(rows, -(-n // step) * step)


def class_tile(rows: int, num_classes: int, tile: int | None) -> int:
    """Classes per score block: ``tile`` when given, else about 32 MiB of float32 scores."""
    if tile is not None:
        return max(1, tile)
    return max(256, min(num_classes, _SCORE_ELEMS // max(1, rows)))


def dist_active() -> bool:
    """Whether torch.distributed runs with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_sub(h: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """h - table[idx] in one fresh buffer of the table's dtype (exact when h is float32 and
    the table float64); index_select is much faster than fancy indexing."""
    out = torch.index_select(table, 0, idx)
    return torch.sub(h, out, out=out)


def class_means(features: Any, labels: Any, num_classes: int) -> tuple[Any, Any]:
    """Class means (C, d) and counts (C,) of features (N, d), in float64, exact to rounding.

    Each class's samples are first centred on one of them (so a large common offset costs no
    digits), then summed in float64. Rows of classes without samples are NaN. Numpy inputs
    give numpy outputs, tensors give tensors on the features' device. Labels are assumed
    checked (integers in [0, num_classes)).
    """
    is_np = not isinstance(features, torch.Tensor)
    h = torch.as_tensor(np.asarray(features)) if is_np else features.detach()
    y = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    y = y.to(device=h.device, dtype=torch.int64)
    n = h.shape[0]
    counts = torch.bincount(y, minlength=num_classes)
    first = torch.full((num_classes,), max(n - 1, 0), dtype=torch.int64, device=h.device)
    first.scatter_reduce_(0, y, torch.arange(n, device=h.device), reduce="amin")
    shift = h[first].to(_F64)
    sums = torch.zeros(num_classes, h.shape[1], dtype=_F64, device=h.device)
    step = chunk_rows(h.shape[1])  # float64 temporaries of a chunk of rows, not of all N
    for i in range(0, n, step):
        sums.index_add_(0, y[i:i + step], gather_sub(h[i:i + step], shift, y[i:i + step]))
    means = shift + sums / counts.to(_F64)[:, None]
    means[counts == 0] = math.nan
    return (means.cpu().numpy(), counts.cpu().numpy()) if is_np else (means, counts)


def spectrum(mt: torch.Tensor, input_eps: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Right singular vectors V (d, k) and singular values S (k,) of the centred means M~ (C, d),
    float64, truncated to k = min(C - 1, numerical rank); and the first dropped singular value.

    The numerical rank counts the singular values above s_max * max(4 sqrt(m eps64), m
    input_eps), m = max(C, d): eigenvalues of Sigma_B below lambda_max * 16 m eps64 (the float64
    noise floor of a Gram matrix), and singular values below the precision ``input_eps`` of the
    features' dtype (float32 features are measured in float32: their projections on a direction
    whose singular value is below that are rounding noise, e.g. the null direction of LayerNorm
    outputs, which lie in a hyperplane).

    Never a decomposition larger than min(C, d) squared. Small problems (min(C, d)^2 max(C, d)
    <= 2^27) take an SVD: of M~^T (d x C) when C <= d, else of the d x d R factor of a QR of
    M~ (same singular values and right vectors). Larger ones take the eigendecomposition of
    the smaller Gram matrix, M~ M~^T (C x C) or M~^T M~ (d x d): LAPACK's SVD is many times
    slower there, and the singular values keep a relative accuracy of eps * cond(M~)^2, like
    an eigendecomposition of Sigma_B itself.
    """
    c, d = mt.shape
    eps, m = torch.finfo(_F64).eps, max(c, d)
    rel = max(4.0 * math.sqrt(m * eps), m * input_eps)
    if min(c, d) ** 2 * max(c, d) <= 1 << 27:
        if c > d:
            _, s, vh = torch.linalg.svd(torch.linalg.qr(mt, mode="r")[1])
            v = vh.T
        else:
            v, s, _ = torch.linalg.svd(mt.T, full_matrices=False)
        tol = float(s[0]) * rel
    else:
        if c > d:
            lam, v = torch.linalg.eigh(mt.T @ mt)
            lam, v = lam.flip(0), v.flip(1)
        else:
            lam, u = torch.linalg.eigh(mt @ mt.T)
            lam, u = lam.flip(0), u.flip(1)
        s = lam.clamp(min=0.0).sqrt()
        tol = float(s[0]) * rel
        keep = max(1, int((s > tol).sum()))
        s = s[:keep]
        v = v[:, :keep] if c > d else (mt.T @ u[:, :keep]) / s
    rank = int((s > tol).sum())
    k = max(1, min(c - 1, rank))
    s_drop = float(s[k]) if k < s.numel() else 0.0
    return v[:, :k].contiguous(), s[:k].clone(), s_drop


def tiled_best(z: torch.Tensor, mat: torch.Tensor, offset: torch.Tensor | None,
               largest: bool, tile: int, score_dtype: torch.dtype | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best column of z @ mat + offset per row, over tiles of ``tile`` columns.

    Returns (index, best score, second-best score) in ``score_dtype`` (default z's); the
    second is +-inf with one column. Ties keep the lowest index.
    """
    n, cols = z.shape[0], mat.shape[1]
    fill = -math.inf if largest else math.inf
    sdt = score_dtype or z.dtype
    best = torch.full((n,), fill, dtype=sdt, device=z.device)
    second = best.clone()
    idx = torch.zeros(n, dtype=torch.int64, device=z.device)
    better = torch.gt if largest else torch.lt
    keep2 = torch.maximum if largest else torch.minimum
    lose2 = torch.minimum if largest else torch.maximum
    for c0 in range(0, cols, tile):
        c1 = min(cols, c0 + tile)
        if offset is not None and offset.dtype == z.dtype:
            s = torch.addmm(offset[c0:c1], z, mat[:, c0:c1])
        else:  # (a low-precision product: widened, then its offset added in float32)
            s = z @ mat[:, c0:c1]
            if s.dtype != sdt:
                s = s.to(sdt)
            if offset is not None:
                s.add_(offset[c0:c1])
        if c1 - c0 >= 2:
            t1, ind, t2 = _top2(s, largest)
        else:
            t1, ind, t2 = s[:, 0], torch.zeros(n, 1, dtype=torch.int64, device=z.device), None
        win = better(t1, best)
        loser = lose2(best, t1)
        second = keep2(second, loser) if t2 is None else keep2(keep2(second, t2), loser)
        idx = torch.where(win, ind[:, 0] + c0, idx)
        best = torch.where(win, t1, best)
    return idx, best, second


def _top2(s: torch.Tensor, largest: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best value, its column (n, 1) and second-best value per row of ``s`` (overwritten):
    a max, then the max with the winner masked (faster than topk on CPU)."""
    if largest:
        t1, ind = s.max(1, keepdim=True)
        return t1[:, 0], ind, s.scatter_(1, ind, -math.inf).amax(1)
    t1, ind = s.min(1, keepdim=True)
    return t1[:, 0], ind, s.scatter_(1, ind, math.inf).amin(1)


def checked_scores(vals: torch.Tensor, largest: bool, scale: torch.Tensor, tol: float,
                   exact: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor,
                                                         torch.Tensor | None]],
                   tile: int) -> torch.Tensor:
    """Best column of precomputed scores per row (``vals`` is overwritten), rows within
    ``tol * scale`` of a tie decided again from ``exact`` as in ``checked_best``."""
    if vals.shape[1] == 1:
        return torch.zeros(vals.shape[0], dtype=torch.int64, device=vals.device)
    t1, ind, t2 = _top2(vals, largest)
    idx = ind[:, 0]
    if tol <= 0:
        return idx
    return _redecide(idx, t1 - t2, largest, scale, tol, exact, tile)[0]


def checked_best(z: torch.Tensor, mat: torch.Tensor, offset: torch.Tensor | None,
                 largest: bool, tile: int, scale: torch.Tensor, tol: float,
                 exact: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor,
                                                       torch.Tensor | None]],
                 extra: torch.Tensor | None = None, low: LowPrecision | None = None
                 ) -> torch.Tensor:
    """``tiled_best`` indices, with rows whose two best scores are within ``tol * scale``
    (plus ``extra``, an absolute error bound per row) decided again from ``exact(rows)`` ->
    (z, mat, offset) in float64 (tiled, a few rows at a time). ``tol = 0`` skips the check
    (float64 inputs). ``low``: take the scores from its bfloat16 copies of ``mat`` and
    ``offset`` instead, with its (wider) rounding bound."""
    if low is not None and low.on and tol > 0 and mat.shape[1] >= 2:
        idx, best, second = tiled_best(z.to(low.dtype), low.mat, low.offset, largest, tile,
                                       torch.float32)  # (no copy when z is bfloat16 already)
        idx, amb = _redecide(idx, best - second, largest, scale, low.tol, exact, tile, extra)
        low.record(z.shape[0], amb)
        return idx
    if z.dtype != mat.dtype:
        z = z.to(mat.dtype)
    idx, best, second = tiled_best(z, mat, offset, largest, tile)
    if tol <= 0 or mat.shape[1] < 2:
        return idx
    return _redecide(idx, best - second, largest, scale, tol, exact, tile, extra)[0]


@dataclass
class Head:
    """One decision read from a column range [start, stop) of a joint score product, with
    its error scale per row, relative tolerance and float64 re-decision (as in
    ``checked_best``)."""

    start: int
    stop: int
    largest: bool
    scale: torch.Tensor
    tol: float
    exact: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def joint_best(z: torch.Tensor, mat: torch.Tensor, offset: torch.Tensor, heads: list[Head],
               low: LowPrecision | None = None, work: dict | None = None
               ) -> list[torch.Tensor]:
    """Several decisions from one product ``z @ mat + offset`` (each head a column range of
    ``mat``): one wide matrix product instead of one per decision, exact as ``checked_best``.
    ``low``: bfloat16 copies of ``mat`` and ``offset`` (its rounding bound replaces the
    heads' tolerances). ``work``: a dict keeping the score buffer from one call to the next
    (a fresh multi-MiB buffer per call costs as much as filling it)."""
    lp = low is not None and low.on
    rows, cols = z.shape[0], mat.shape[1]
    sdt = torch.float32 if lp else mat.dtype
    buf = None if work is None else work.get("scores")
    if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.dtype != sdt:
        buf = torch.empty(rows, cols, dtype=sdt, device=z.device)
        if work is not None:
            work["scores"] = buf
    s = buf[:rows]
    if lp:  # float32 scores: the bfloat16 product widened, then the offset added
        s.copy_(torch.mm(z.to(low.dtype), low.mat)).add_(low.offset)
    else:
        torch.addmm(offset, z if z.dtype == mat.dtype else z.to(mat.dtype), mat, out=s)
    out, amb_all = [], 0
    for hd in heads:
        if hd.stop - hd.start < 2:
            out.append(torch.zeros(z.shape[0], dtype=torch.int64, device=z.device))
            continue
        t1, ind, t2 = _top2(s[:, hd.start:hd.stop], hd.largest)
        tol = low.tol if lp else hd.tol
        if tol <= 0:
            out.append(ind[:, 0])
            continue
        idx, amb = _redecide(ind[:, 0], t1 - t2, hd.largest, hd.scale, tol, hd.exact,
                             hd.stop - hd.start)
        out.append(idx)
        amb_all += amb
    if lp:
        low.record(z.shape[0] * len(heads), amb_all)
    return out


class LowPrecision:
    """bfloat16 copies of a score matrix (d, C) and offset (C,) for ``checked_best``, where
    bfloat16 products are fast: each score is then within 2^-6 (||z|| ||m_c|| + |offset_c|)
    of the exact one (inputs and product rounded to 8 significant bits, float32 accumulation,
    the offset added in float32; ``scale`` must bound that sum), so two scores within
    ``tol * scale`` with tol = 2^-5 + 4 (d + 2) 2^-24 are decided again in float64. When
    more than a quarter of the first 8,192 rows need that (scores too close for bfloat16),
    it switches itself off."""

    dtype = torch.bfloat16

    def __init__(self, mat: torch.Tensor, offset: torch.Tensor | None) -> None:
        self.mat = mat.to(self.dtype)
        self.offset = None if offset is None else offset.float()  # added to the products
        self.tol = 2.0 ** -5 + 4.0 * (mat.shape[0] + 2) * 2.0 ** -24
        self.rows = self.ambiguous = 0
        self.on = True

    def record(self, rows: int, ambiguous: int) -> None:
        """Count a block's rows and its ambiguous ones; switch off when they are many."""
        self.rows += rows
        self.ambiguous += ambiguous
        if self.rows >= 8192 and 4 * self.ambiguous > self.rows:
            self.on = False


def fast_low_precision(device: torch.device) -> bool:
    """Whether bfloat16 matrix products are fast here (and accumulate in float32): CPUs with
    AVX512-BF16/AMX, CUDA devices that support bfloat16."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        probe = getattr(getattr(torch, "cpu", None), "_is_avx512_bf16_supported", None)
        return bool(probe is not None and probe())
    return False


def _redecide(idx: torch.Tensor, gap: torch.Tensor, largest: bool, scale: torch.Tensor,
              tol: float, exact: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor,
                                                                torch.Tensor | None]],
              tile: int, extra: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """``idx`` with the rows whose two best scores are within ``tol * scale`` (+ ``extra``)
    (``gap``) decided again from ``exact(rows)`` in float64, a few rows at a time; and how
    many rows that was."""
    bound = tol * scale if extra is None else tol * scale + extra
    amb = torch.nonzero(gap.abs_() <= bound).flatten()
    if amb.numel():
        z64, mat64, off64 = exact(amb)
        rows = max(1, _SCORE_ELEMS // max(1, mat64.shape[1]))
        for r0 in range(0, amb.numel(), rows):
            sub = slice(r0, r0 + rows)
            idx[amb[sub]] = tiled_best(z64[sub], mat64, off64, largest, tile)[0]
    return idx, int(amb.numel())


def decision_tol(dtype: torch.dtype, depth: int) -> float:
    """Relative rounding bound of a dot product of length ``depth`` in ``dtype`` (0 for
    float64: float64 decisions are taken as they come)."""
    if dtype == _F64:
        return 0.0
    return (8.0 * math.sqrt(depth) + 8.0) * torch.finfo(dtype).eps
