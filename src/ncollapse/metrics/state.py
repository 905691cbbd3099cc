"""The accumulator's state, declared once: one table of named tensors per pass.

Each ``Spec`` names a tensor, its shape (in the symbols ``C`` classes, ``d`` feature dimension,
``1``), its dtype, how two states combine (``reduce``) and, for the anchored groups, which group
it belongs to. ``new_state``, ``merge_state``, ``sync_state``, ``check_state`` (used by
``load_state_dict``) all iterate that table; nothing creates state anywhere else.

Anchored groups (the per-class statistics, and the out-of-distribution mean as a one-row
group) keep, per row r: a shift s_r (one of the row's own samples, exact in the input dtype),
whether a shift was seen, the count n_r, the float64 sum of h - s_r and, optionally, the
centred sum of squares and the d x d centred scatter. Two groups combine exactly: the other's
sums are re-expressed relative to this state's shifts and the second moments get Chan's
correction n_a n_b / (n_a + n_b) ||m_a - m_b||^2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ncollapse import validation as V

__all__ = ["Spec", "PASS1", "PASS2", "enabled", "new_state", "merge_state", "sync_state",
           "check_state", "fingerprint", "check_same_classifier"]

_F64, _I64 = torch.float64, torch.int64

# reduce kinds: "sum" adds; the rest belong to an anchored group and combine together
_GROUP_KINDS = ("shift", "seen", "count", "shifted_sum", "chan_ss", "chan_scatter")


@dataclass(frozen=True)
class Spec:
    """One state tensor: name, shape symbols, dtype, how it combines, group, when it exists."""

    name: str
    shape: tuple[str, ...]
    dtype: torch.dtype
    reduce: str
    group: str | None = None
    when: str | None = None  # an option name that must be true for the tensor to exist


PASS1: tuple[Spec, ...] = (
    Spec("shift", ("C", "d"), _F64, "shift", "class"),
    Spec("seen", ("C",), torch.bool, "seen", "class"),
    Spec("counts", ("C",), _I64, "count", "class"),
    Spec("sums", ("C", "d"), _F64, "shifted_sum", "class"),
    Spec("ss", ("C",), _F64, "chan_ss", "class", when="track_spread"),
    Spec("scatter", ("d", "d"), _F64, "chan_scatter", "class", when="full_covariance"),
    Spec("correct", (), _I64, "sum", when="classify_pass1"),
    Spec("decided", (), _I64, "sum", when="classify_pass1"),
    Spec("ood_shift", ("1", "d"), _F64, "shift", "ood"),
    Spec("ood_seen", ("1",), torch.bool, "seen", "ood"),
    Spec("ood_counts", ("1",), _I64, "count", "ood"),
    Spec("ood_sums", ("1", "d"), _F64, "shifted_sum", "ood"),
)

PASS2: tuple[Spec, ...] = (
    Spec("counts", ("C",), _I64, "sum"),
    Spec("ss", ("C",), _F64, "sum"),  # per class: sum of ||h - a_y||^2 (anchor a = rounded mean)
    Spec("nc1", ("C",), _F64, "sum", when="projections"),  # per class: ||S^-1 V^T x||^2
    Spec("scatter", ("d", "d"), _F64, "sum", when="scatter"),  # sum x x^T (upper blocks)
    Spec("ncc_wrong", (), _I64, "sum"),  # nearest class centre != label
    Spec("mismatch", (), _I64, "sum"),
    Spec("compared", (), _I64, "sum"),
    Spec("correct", (), _I64, "sum"),
    Spec("decided", (), _I64, "sum"),
)


def enabled(specs: Iterable[Spec], options: dict[str, bool]) -> list[Spec]:
    """The specs whose condition holds for these options."""
    return [s for s in specs if s.when is None or options[s.when]]


def _shape(spec: Spec, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(1 if k == "1" else dims[k] for k in spec.shape)


def new_state(specs: list[Spec], dims: dict[str, int], device: torch.device
              ) -> dict[str, torch.Tensor]:
    """Fresh zero (False) tensors for every spec."""
    return {s.name: torch.zeros(_shape(s, dims), dtype=s.dtype, device=device) for s in specs}


def check_state(state: dict, specs: list[Spec], dims: dict[str, int], device: torch.device
                ) -> dict[str, torch.Tensor]:
    """Copies of the saved tensors on ``device``; raise if one is missing or misshapen."""
    out = {}
    for s in specs:
        if s.name not in state or not isinstance(state[s.name], torch.Tensor):
            raise ValueError(f"saved accumulator state lacks the tensor {s.name!r}; it was saved "
                             f"with other options (full_covariance, second_pass, classifier)")
        t = state[s.name]
        want = _shape(s, dims)
        if tuple(t.shape) != want:
            raise ValueError(f"saved state tensor {s.name!r} has shape {tuple(t.shape)}, "
                             f"expected {want} for (C, d) = ({dims['C']}, {dims['d']})")
        out[s.name] = t.to(device=device, dtype=s.dtype).clone()
    return out


def _groups(specs: list[Spec]) -> dict[str, dict[str, str]]:
    """group -> reduce kind -> tensor name."""
    out: dict[str, dict[str, str]] = {}
    for s in specs:
        if s.reduce in _GROUP_KINDS:
            out.setdefault(str(s.group), {})[s.reduce] = s.name
    return out


def merge_state(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor],
                specs: list[Spec]) -> torch.Tensor | None:
    """Fold ``src`` (same specs, on dst's device) into ``dst`` exactly.

    Returns the mask of class rows whose shift ``dst`` adopted from ``src`` (None without a
    class group), so that tables derived from the shifts can be refreshed.
    """
    adopted = None
    for group, k in _groups(specs).items():
        new = _merge_group(dst, src, k)
        if group == "class":
            adopted = new
    for s in specs:
        if s.reduce == "sum":
            dst[s.name] += src[s.name]
    return adopted


def _merge_group(dst: dict, src: dict, k: dict[str, str]) -> torch.Tensor:
    shift, seen = k["shift"], k["seen"]
    adopt = src[seen] & ~dst[seen]
    dst[shift][adopt] = src[shift][adopt]
    dst[seen] |= adopt
    nb_i = src[k["count"]]
    nb = nb_i.to(_F64)
    sums = src[k["shifted_sum"]] + nb[:, None] * (src[shift] - dst[shift])
    sums = torch.where((nb_i > 0)[:, None], sums, torch.zeros_like(sums))
    na = dst[k["count"]].to(_F64)
    delta = (dst[k["shifted_sum"]] / na.clamp(min=1.0)[:, None]
             - sums / nb.clamp(min=1.0)[:, None])
    wgt = torch.where((na > 0) & (nb > 0), na * nb / (na + nb).clamp(min=1.0),
                      torch.zeros_like(na))
    if "chan_ss" in k:
        dst[k["chan_ss"]] += src[k["chan_ss"]] + wgt * (delta * delta).sum(1)
    if "chan_scatter" in k:
        dst[k["chan_scatter"]] += src[k["chan_scatter"]] + (delta * wgt[:, None]).T @ delta
    dst[k["shifted_sum"]] += sums
    dst[k["count"]] += nb_i
    return adopt


def sync_state(state: dict[str, torch.Tensor], specs: list[Spec]) -> None:
    """All-reduce ``state`` in place over torch.distributed (a collective), exactly.

    In each anchored group every row takes its shift from the lowest rank that saw the row,
    every rank re-expresses its sums relative to it, counts and sums are summed and the
    second moments get Chan's correction against the global row means before summing.
    """
    for k in _groups(specs).values():
        _sync_group(state, k)
    for s in specs:
        if s.reduce == "sum":
            dist.all_reduce(state[s.name])


def _sync_group(st: dict, k: dict[str, str]) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    shift, seen, cnt, sm = k["shift"], k["seen"], k["count"], k["shifted_sum"]
    owner = torch.where(st[seen], rank, world).to(_I64)
    dist.all_reduce(owner, op=dist.ReduceOp.MIN)
    common = torch.where((owner == rank)[:, None], st[shift], torch.zeros_like(st[shift]))
    dist.all_reduce(common)
    n_loc = st[cnt].to(_F64)
    sums = st[sm] + n_loc[:, None] * (st[shift] - common)
    sums = torch.where((st[cnt] > 0)[:, None], sums, torch.zeros_like(sums))
    m_loc = sums / n_loc.clamp(min=1.0)[:, None]
    counts = st[cnt].clone()
    dist.all_reduce(counts)
    dist.all_reduce(sums)
    delta = m_loc - sums / counts.to(_F64).clamp(min=1.0)[:, None]
    if "chan_ss" in k:
        ss = st[k["chan_ss"]] + n_loc * (delta * delta).sum(1)
        dist.all_reduce(ss)
        st[k["chan_ss"]] = ss
    if "chan_scatter" in k:
        sc = st[k["chan_scatter"]] + (delta * n_loc[:, None]).T @ delta
        dist.all_reduce(sc)
        st[k["chan_scatter"]] = sc
    st[shift], st[seen], st[cnt], st[sm] = common, owner < world, counts, sums


# ----------------------------------------------------------------------------- classifier


def fingerprint(x: Any) -> torch.Tensor | None:
    """Shape and three float64 moments of a classifier tensor (to recognise it again: saved
    with the state, compared by ``merge`` and ``load_state_dict``)."""
    if x is None:
        return None
    t = V.as_tensor(x, "classifier").detach().to("cpu", _F64)
    flat = t.reshape(-1)
    ramp = torch.linspace(-1.0, 1.0, flat.numel(), dtype=_F64)
    return torch.tensor([*t.shape, float(flat.sum()), float(flat @ flat), float(flat @ ramp)],
                        dtype=_F64)


def check_same_classifier(mine: dict, theirs: dict, what: str) -> None:
    """Raise unless the fingerprints ``theirs`` (weight, bias, ncc_means) match ``mine``."""
    for key, fp in mine.items():
        other = theirs.get(key)
        same = (fp is None and other is None) or (
            fp is not None and other is not None and fp.shape == other.shape
            and bool(torch.allclose(fp, other, rtol=1e-12, atol=0.0)))
        if not same:
            raise ValueError(
                f"{what} with a different {key} ({_describe(other)}) than this "
                f"accumulator's ({_describe(fp)}); construct the accumulator with the "
                f"same weight, bias and ncc_means"
            )


def _describe(fp: torch.Tensor | None) -> str:
    if fp is None:
        return "none"
    shape = "x".join(str(int(v)) for v in fp[:-3])
    return f"shape {shape}, sum {float(fp[-3]):.6g}"
