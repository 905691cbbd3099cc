"""Numeric kernels of the metrics: chunk sizes, pairwise statistics of class vectors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

_F64 = torch.float64
_CHUNK_ELEMS = 1 << 18  # float32 feature elements per chunk (1 MiB)
_BULK_ELEMS = 1 << 19  # float32 feature elements per operation in the few-class paths


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return _F64 if dtype == _F64 else torch.float32


def _chunk_rows(dim: int, cols: int = 0) -> int:
    """Rows per chunk: about a MiB of features (cache-sized elementwise work), and enough
    rows for an efficient matrix product with ``cols`` columns."""
    rows = _CHUNK_ELEMS // max(1, dim)
    if cols >= 512:
        rows = max(rows, 1024)
    return max(64, min(8192, rows))


def _bulk_rows(dim: int, step: int, n: int) -> int:
    """Rows per operation for narrow work (few classes): about 2 MiB of float32 features
    (cache-sized), a multiple of ``step``, so that per-operation overhead (thread start-up)
    stays small."""
    rows = max(step, (_BULK_ELEMS // max(1, dim)) // step * step)
    return min(rows, -(-n // step) * step)


_PAIRS: dict[tuple[int, str], torch.Tensor] = {}


def _pairs(c: int, device: torch.device) -> torch.Tensor:
    """Index pairs c < c' (2 x C(C-1)/2), cached for small C (read-only)."""
    if c > 256:
        return torch.triu_indices(c, c, offset=1, device=device)
    key = (c, str(device))
    if key not in _PAIRS:
        _PAIRS[key] = torch.triu_indices(c, c, offset=1, device=device)
    return _PAIRS[key]


def _dist_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _f(x: torch.Tensor | float) -> float:
    return float(x)


def _angles(x: torch.Tensor, gram: torch.Tensor | None = None
            ) -> tuple[float, float | None, float, float]:
    """Equinorm, equiangularity, max-angle and ETF-Gram error of the rows of ``x`` (float64)."""
    c = x.shape[0]
    g = x @ x.T if gram is None else gram
    norms = x.norm(dim=1)
    equinorm = _f(norms.std(unbiased=True) / norms.mean())
    cos = g / norms[:, None] / norms[None, :]
    iu = _pairs(c, x.device)
    pair = cos[iu[0], iu[1]]
    equiang = _f(pair.std(unbiased=True)) if pair.numel() > 1 else None
    maxangle = _f((pair + 1.0 / (c - 1)).abs().mean())
    return equinorm, equiang, maxangle, _etf_error(g)


def _etf_error(g: torch.Tensor) -> float:
    c = g.shape[0]
    target = (torch.eye(c, dtype=_F64, device=g.device) - 1.0 / c) / math.sqrt(c - 1)
    return _f(torch.linalg.matrix_norm(g / torch.linalg.matrix_norm(g) - target))


def _pair_sqdist(x: torch.Tensor, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Squared distances between the rows of ``x`` (float64), exact differences when small."""
    c, d = x.shape
    if c * c * d <= 1 << 24:
        return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    g = x @ x.T if gram is None else gram
    sq = g.diagonal()
    out = sq[:, None] + sq[None, :] - 2.0 * g
    out.clamp_(min=0.0).fill_diagonal_(0.0)
    return out


def _gather_sub(h: torch.Tensor, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
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
    sums.index_add_(0, y, h.to(_F64) - shift[y])
    means = shift + sums / counts.to(_F64)[:, None]
    means[counts == 0] = math.nan
    return (means.cpu().numpy(), counts.cpu().numpy()) if is_np else (means, counts)
