"""Folding one validated batch into the accumulator's state: pass 1 and pass 2 kernels.

Pass 1 adds, per class, the float64 sums of h - s_y (s_y: the class shift, one of its own
samples) and optionally the centred sums of squares (Chan) and the d x d scatter. Pass 2 reads
the frozen ``Pass2Tables`` and adds, per chunk of rows, the NC1 projections, the within-class
sums of squares, and the nearest-centre and classifier decisions (over class tiles, exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ncollapse import validation as V
from ncollapse.metrics.certify import Certifier
from ncollapse.metrics.kernels import (
    Head,
    LowPrecision,
    bulk_rows,
    checked_best,
    checked_scores,
    chunk_rows,
    class_tile,
    fast_low_precision,
    gather_sub,
    joint_best,
)
from ncollapse.metrics.tables import Classifier, Pass2Tables

__all__ = ["update_pass1", "update_pass2", "update_ood", "classify", "low_precision"]

_F64 = torch.float64


def classify(clf: Classifier, hc: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
             beta_max: float, tol: float, tile: int | None,
             znorm: torch.Tensor | None = None, low: LowPrecision | None = None
             ) -> torch.Tensor:
    """argmax_c (w_c.h + b_c) per row, as (h - g).w_c + beta_c with beta = W g + b (compute
    dtype), over class tiles; rows within rounding of a tie are decided in float64.
    ``znorm``: an upper bound of ||h - g|| per row (computed when not given); ``low``:
    bfloat16 copies of W^T and beta (``low_precision``)."""
    z = _centred(hc, g, None if znorm is None else low)
    if znorm is None:
        znorm = torch.linalg.vector_norm(z, dim=1)
    scale = beta_max + clf.wmax * znorm
    c = clf.weight.shape[0]
    return checked_best(z, clf.wt, beta, True, class_tile(z.shape[0], c, tile), scale, tol,
                        _logits_exact(clf, hc, g), low=low)


def _centred(hc: torch.Tensor, g: torch.Tensor, low: LowPrecision | None) -> torch.Tensor:
    """h - g in the compute dtype, or (``low`` on) rounded once, straight to bfloat16 (within
    the bound of ``low``)."""
    if low is None or not low.on:
        return hc - g
    return torch.sub(hc, g, out=torch.empty(hc.shape, dtype=low.dtype, device=hc.device))


def _logits_exact(clf: Classifier, hc: torch.Tensor, g: torch.Tensor):
    """rows -> the float64 (h - g, W^T, W g + b) of the logits, for re-deciding near ties."""
    g64 = g.to(_F64)
    return lambda rows: (hc[rows].to(_F64) - g64, clf.weight.T, clf.offsets(g64))


def _ncc_exact(tab: Pass2Tables, hc: torch.Tensor):
    """rows -> the float64 (h - o, -2 (centre_c - o)^T, ||centre_c - o||^2) of the
    nearest-centre scores (o: g for given centres, mu_G for the class means), for re-deciding
    near ties; -2 (centre - o)^T is built on first use."""
    given = tab.nu_t is not None
    origin = tab.g.to(_F64) if given else tab.stats.mu_g

    def exact(rows: torch.Tensor):
        if tab.mt_m2 is None:
            tab.mt_m2 = -2.0 * (tab.nu64 if given else tab.stats.mt).T
        q = (tab.nu64 * tab.nu64).sum(1) if given else tab.q64
        return hc[rows].to(_F64) - origin, tab.mt_m2, q

    return exact


def low_precision(cache: dict, key: str, mat: torch.Tensor, offset: torch.Tensor | None,
                  tol: float) -> LowPrecision | None:
    """The bfloat16 scores of ``cache[key]`` (built on first use) where they are fast and
    the decisions are checked (float32 compute: ``tol > 0``), else None."""
    if tol <= 0 or not fast_low_precision(mat.device):
        return None
    if key not in cache:
        cache[key] = LowPrecision(mat, offset)
    return cache[key]


def update_pass1(st: dict[str, torch.Tensor], h: torch.Tensor, y: torch.Tensor,
                 decide, track: bool, full: bool) -> None:
    """Fold a batch into the pass-1 state ``st``; ``decide(rows, chunk_labels)`` (optional)
    returns the classifier decisions of a chunk, counted into ``correct``/``decided``."""
    c, (n, d) = st["counts"].shape[0], h.shape
    shift, seen = st["shift"], st["seen"]
    bc = torch.bincount(y, minlength=c)
    new = (bc > 0) & ~seen
    if bool(new.any()):
        first = torch.full((c,), n, dtype=torch.int64, device=h.device)
        first.scatter_reduce_(0, y, torch.arange(n, device=h.device), reduce="amin")
        cls = torch.nonzero(new).flatten()
        rows = h[first[cls]]
        if not bool(torch.isfinite(rows).all()):
            V.report_nonfinite(h, "features")
        shift[cls] = rows.to(_F64)
        seen |= new
    step = chunk_rows(d)
    chan = track or full
    # Few classes, nothing else to do: float32 differences summed in float32 per slot of
    # ``step`` rows (a few dozen terms per class), the slots then summed in float64.
    fast = not chan and decide is None and h.dtype == torch.float32 and c * 16 <= step
    if fast:
        shift_ct = shift.to(h.dtype)
        big = bulk_rows(d, step, n)
        nslot = -(-big // step)
        part = torch.zeros(nslot * c, d, dtype=h.dtype, device=h.device)
        slot_of = torch.arange(big, device=h.device).div_(step, rounding_mode="floor").mul_(c)
        for i in range(0, n, big):
            yc = y[i:i + big]
            part.index_add_(0, torch.add(slot_of[:yc.shape[0]], yc),
                            gather_sub(h[i:i + big], shift_ct, yc))
            st["sums"] += part.view(nslot, c, d).sum(0, dtype=_F64)
            if i + big < n:
                part.zero_()
    for i in range(0, 0 if fast else n, step):
        hc, yc = h[i:i + step], y[i:i + step]
        dl = gather_sub(hc, shift, yc)  # float64, exact for float32 inputs
        if chan:
            _chan_update(st, dl, yc)
        else:
            st["sums"].index_add_(0, yc, dl)
        if decide is not None:
            pred = decide(slice(i, i + step), hc)
            if pred is not None:
                st["correct"] += (pred == yc).sum()
                st["decided"] += yc.numel()
    if not chan:
        st["counts"] += bc
    if not bool(torch.isfinite(st["sums"][bc > 0]).all()):
        V.report_nonfinite(h, "features")


def _chan_update(st: dict[str, torch.Tensor], dl: torch.Tensor, yc: torch.Tensor) -> None:
    """Merge a chunk's per-class sums and centred second moments (Chan et al.)."""
    cls, inv = torch.unique(yc, return_inverse=True)
    k = cls.numel()
    nb = torch.bincount(inv, minlength=k).to(_F64)
    sb = torch.zeros(k, dl.shape[1], dtype=_F64, device=dl.device).index_add_(0, inv, dl)
    mb = sb / nb[:, None]
    dev = dl - mb[inv]
    na = st["counts"][cls].to(_F64)
    ma = st["sums"][cls] / na.clamp(min=1.0)[:, None]
    wgt = na * nb / (na + nb)
    delta = ma - mb
    if "ss" in st:
        ssb = torch.zeros(k, dtype=_F64, device=dl.device).index_add_(0, inv,
                                                                      (dev * dev).sum(1))
        st["ss"][cls] += ssb + wgt * (delta * delta).sum(1)
    if "scatter" in st:
        st["scatter"] += dev.T @ dev + (delta * wgt[:, None]).T @ delta
    st["sums"][cls] += sb
    st["counts"][cls] += nb.to(torch.int64)


def update_ood(st: dict[str, torch.Tensor], h: torch.Tensor) -> None:
    """Fold out-of-distribution features into the one-row ``ood_*`` group (float64 sums)."""
    if not bool(st["ood_seen"][0]):
        if not bool(torch.isfinite(h[0]).all()):
            V.report_nonfinite(h, "ood_features")
        st["ood_shift"][0] = h[0].to(_F64)
        st["ood_seen"][0] = True
    step = chunk_rows(h.shape[1])
    acc = torch.zeros(h.shape[1], dtype=_F64, device=h.device)
    for i in range(0, h.shape[0], step):
        acc += (h[i:i + step].to(_F64) - st["ood_shift"][0]).sum(0)
    if not bool(torch.isfinite(acc).all()):
        V.report_nonfinite(h, "ood_features")
    st["ood_sums"][0] += acc
    st["ood_counts"][0] += h.shape[0]


def update_pass2(st: dict[str, torch.Tensor], tab: Pass2Tables, h: torch.Tensor,
                 y: torch.Tensor, lg: torch.Tensor | None, clf: Classifier | None,
                 tile: int | None) -> None:
    """Fold a batch (the same data as pass 1) into the pass-2 state ``st``."""
    counts = torch.bincount(y, minlength=tab.pos.shape[0])
    if bool(counts[tab.pos < 0].any()):
        first = int(torch.nonzero(tab.pos[y] < 0)[0, 0])
        raise ValueError(
            f"pass 2 got label {int(y[first])} (index {first}), a class that had no samples "
            f"in pass 1; pass 2 must see the same data as pass 1"
        )
    use_w = clf is not None and lg is None
    classify_on = use_w or lg is not None
    n, d = h.shape
    cp = tab.stats.cp
    width = tab.k + (cp if use_w else 0)
    step = chunk_rows(d, width)
    if width < 64:  # narrow products (few classes): few, large operations (16 MiB of rows)
        step = max(step, min(n, (1 << 22) // max(1, d)))
    beta = beta_max = None
    if use_w:
        beta64 = clf.offsets(tab.g.to(_F64))
        beta, beta_max = beta64.to(h.dtype), float(beta64.abs().max())
    few = use_w and clf.weight.shape[0] ** 2 <= 1 << 20  # the fused product is possible
    cert = _certifier(tab, clf, tile, few) if use_w else None
    low = low_precision(tab.low, "logits", clf.wt, beta, tab.tol) if use_w else None
    work: dict = {}  # buffers kept from one chunk to the next
    nc1 = None if tab.scatter else torch.zeros_like(st["nc1"])
    ss = torch.zeros_like(st["ss"])
    wrong, mismatch, correct = (torch.zeros((), dtype=torch.int64, device=h.device)
                                for _ in range(3))
    for i in range(0, n, step):
        hc, yc = h[i:i + step], y[i:i + step]
        x = gather_sub(hc, tab.anchor, yc)
        xn = torch.linalg.vector_norm(x, dim=1)
        ss.index_add_(0, yc, torch.square(xn.to(_F64)))  # a new tensor: xn is used below
        open_rows = None
        if cert is not None and (rad := cert.radius(yc)) is not None:
            open_rows = torch.nonzero(xn >= rad).flatten()  # decisions not certified
            cert.count(yc.numel(), yc.numel() - open_rows.numel())
        # [V |] W^T in one product (few classes), unless most decisions are certified or
        # the logits come cheaper from bfloat16 products
        few_open = open_rows is not None and 2 * open_rows.numel() <= yc.numel()
        fuse = few and (cert is None or (not few_open and (low is None or not low.on)))
        fused = _fused(tab, clf, h.dtype) if fuse else None
        prod = x @ fused.basis if fuse else None
        if tab.scatter:
            _add_scatter(st["scatter"], x)
            proj = None
        else:
            proj = x @ tab.vs_t if prod is None else prod[:, :tab.k]  # x V S^-1
            nc1.index_add_(0, yc, torch.linalg.vector_norm(proj, dim=1).to(_F64).square_())
        # most rows open to both decisions: one product for both (shared operand h - g)
        if use_w and not fuse and _joint_wanted(tab, yc, open_rows, xn) and (
                joint := _joint(tab, clf, beta, h.dtype)) is not None:
            ncc, pred = _decide_joint(joint, tab, clf, hc, yc, xn, beta_max, work)
            wrong += (ncc != yc).sum()
            mismatch += (pred != ncc).sum()
            correct += (pred == yc).sum()
            continue
        ncc = _ncc(tab, hc, yc, x, proj, xn, tile)
        wrong += (ncc != yc).sum()
        if not classify_on:
            continue
        if fuse:  # logits = W x + (W a_y + b), the second term from a table
            pred = _classify_fused(fused, clf, prod, hc, yc, xn, tab.tol)
        elif use_w and open_rows is not None:  # certified rows are decided: their label
            pred = yc.clone()
            if open_rows.numel() == yc.numel():  # no copies of the rows when all are open
                pred = classify(clf, hc, tab.g, beta, beta_max, tab.tol, tile,
                                xn + torch.index_select(tab.ag_norm, 0, yc), low)
            elif open_rows.numel():
                pred[open_rows] = classify(
                    clf, hc[open_rows], tab.g, beta, beta_max, tab.tol, tile,
                    xn[open_rows] + torch.index_select(tab.ag_norm, 0, yc[open_rows]), low)
        elif use_w:
            pred = classify(clf, hc, tab.g, beta, beta_max, tab.tol, tile,
                            xn + torch.index_select(tab.ag_norm, 0, yc), low)
        else:
            pred = lg[i:i + step].argmax(1)
        mismatch += (pred != ncc).sum()
        correct += (pred == yc).sum()
    if not bool(torch.isfinite(ss).all()):
        V.report_nonfinite(h, "features")
    if nc1 is not None:
        st["nc1"] += nc1
    st["ss"] += ss
    st["counts"] += counts
    st["ncc_wrong"] += wrong
    if classify_on:
        st["mismatch"] += mismatch
        st["correct"] += correct
        st["compared"] += n
        st["decided"] += n


@dataclass
class _Fused:
    """Few classes (C^2 <= 2^20): one product x [V S^-1 | W^T] per chunk and a C x C table."""

    basis: torch.Tensor  # (d, k + C) or (d, C) compute dtype
    table: torch.Tensor  # (C, C): w_c.a_y + b_c - (w_y.a_y + b_y), row y, compute dtype
    scale: torch.Tensor  # (C,) max_c |table[y, c]|
    width: int  # C


@dataclass
class _Joint:
    """Both decisions from one product (h - g) [W^T | N], N the nearest-centre matrix
    -2 (centre_c - g)^T over the candidate centres; offsets [W g + b | ||centre_c - g||^2]."""

    mat: torch.Tensor  # (d, C + m) compute dtype
    offset: torch.Tensor  # (C + m,) compute dtype
    classes: int  # C
    centre_max: float  # max_c ||centre_c - g||


def _joint_wanted(tab: Pass2Tables, yc: torch.Tensor, open_rows: torch.Tensor | None,
                  xn: torch.Tensor) -> bool:
    """Whether at least 3/4 of the chunk's rows need both the logits and the nearest-centre
    scores (then one joint product over all rows costs less than two)."""
    rows = yc.numel()
    if open_rows is not None and 4 * open_rows.numel() < 3 * rows:
        return False
    if tab.nu_t is not None:
        return True
    # ||x|| >= ||x V||: a row below the radius by ||x|| needs no nearest-centre scores
    return 4 * int((xn >= torch.index_select(tab.radius, 0, yc)).sum()) >= 3 * rows


def _joint(tab: Pass2Tables, clf: Classifier, beta: torch.Tensor, ct: torch.dtype
           ) -> _Joint | None:
    """The joint product's matrices (built on first use); None where it does not pay: many
    columns (the class tiles are wide already), or the nearest-centre scores over d
    coordinates cost much more than over the k of the means' span."""
    if tab.joint is None:
        tab.joint = False
        d, c = clf.wt.shape
        m = tab.stats.cp if tab.nu_t is None else tab.nu_t.shape[1]
        if c + m <= 8192 and (tab.nu_t is not None or 4 * tab.k >= 3 * d):
            if tab.nu_t is not None:
                cm, q, cmax = tab.nu_t, tab.nu_q, tab.nu_max
            else:
                mg = tab.stats.mt + (tab.stats.mu_g - tab.g.to(_F64))  # centre_c - g
                cm, q = (-2.0 * mg).to(ct).T, tab.q
                cmax = float(torch.linalg.vector_norm(mg, dim=1).max())
                del mg
            tab.joint = _Joint(torch.cat([clf.wt, cm], dim=1).T.contiguous().T,
                               torch.cat([beta, q]), c, cmax)
    return tab.joint or None


def _decide_joint(j: _Joint, tab: Pass2Tables, clf: Classifier, hc: torch.Tensor,
                  yc: torch.Tensor, xn: torch.Tensor, beta_max: float, work: dict
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(nearest-centre, classifier) decisions (class ids) of a chunk from the joint product."""
    low = low_precision(tab.low, "joint", j.mat, j.offset, tab.tol)
    znorm = xn + torch.index_select(tab.ag_norm, 0, yc)  # >= ||h - g||
    c, cols = j.classes, j.mat.shape[1]
    heads = [Head(0, c, True, beta_max + clf.wmax * znorm, tab.tol,
                  _logits_exact(clf, hc, tab.g)),
             Head(c, cols, False, tab.q_max + 2.0 * j.centre_max * znorm, tab.tol,
                  _ncc_exact(tab, hc))]
    pred, near = joint_best(_centred(hc, tab.g, low), j.mat, j.offset, heads, low, work)
    if tab.nu_t is None:
        near = torch.index_select(tab.stats.present, 0, near)
    return near, pred


def _certifier(tab: Pass2Tables, clf: Classifier, tile: int | None,
               few: bool) -> Certifier | None:
    """The classifier certification of ``tab`` (built on first use); None where the fused
    product is narrow (few classes and columns: the logits cost little next to reading
    the rows)."""
    if few and clf.weight.shape[0] + (0 if tab.scatter else tab.k) < 64:
        return None
    if tab.cert is None:
        tab.cert = Certifier(clf, tab.anchor, tab.pos >= 0, tab.tol, tile)
    return tab.cert


def _fused(tab: Pass2Tables, clf: Classifier, ct: torch.dtype) -> _Fused | None:
    c = clf.weight.shape[0]
    if c * c > 1 << 20:
        return None
    if tab.fused is None:
        t64 = clf.offsets_at(tab.anchor.to(_F64))
        t64 -= t64.diagonal()[:, None].clone()
        cols = [clf.wt] if tab.scatter else [tab.vs_t, clf.wt]
        tab.fused = _Fused(torch.cat(cols, dim=1).T.contiguous().T, t64.to(ct),
                           t64.abs().amax(1).to(ct), c)
    return tab.fused


def _classify_fused(f: _Fused, clf: Classifier, prod: torch.Tensor, hc: torch.Tensor,
                    yc: torch.Tensor, xn: torch.Tensor, tol: float) -> torch.Tensor:
    vals = prod[:, -f.width:] + torch.index_select(f.table, 0, yc)
    scale = torch.index_select(f.scale, 0, yc) + clf.wmax * xn
    bias = clf.offsets(torch.zeros(clf.weight.shape[1], dtype=_F64, device=hc.device))

    def exact(rows: torch.Tensor):
        return hc[rows].to(_F64), clf.weight.T, bias

    return checked_scores(vals, True, scale, tol, exact, f.width)


def _add_scatter(acc: torch.Tensor, x: torch.Tensor, blocks: int = 4) -> None:
    """acc += x^T x on and above the diagonal blocks of a ``blocks`` x ``blocks`` partition
    (one product per block row; float64 accumulator; the rest is the mirror image)."""
    d = x.shape[1]
    for bi in range(blocks):
        a0, a1 = d * bi // blocks, d * (bi + 1) // blocks
        acc[a0:a1, a0:] += x[:, a0:a1].T @ x[:, a0:]


def _ncc(tab: Pass2Tables, hc: torch.Tensor, yc: torch.Tensor, x: torch.Tensor,
         proj: torch.Tensor | None, xn: torch.Tensor, tile: int | None) -> torch.Tensor:
    """Nearest-class-centre decisions (class ids) of a chunk, exact. ``proj`` = x V S^-1, or
    None (then the rows left open by ||x|| >= ||x V|| are projected)."""
    if tab.nu_t is not None:
        z = hc - tab.g  # given centres: scores ||nu_c - g||^2 - 2 (h - g).(nu_c - g)
        scale = tab.q_max + 2.0 * tab.nu_max * torch.linalg.vector_norm(z, dim=1)
        return checked_best(z, tab.nu_t, tab.nu_q, False,
                            class_tile(z.shape[0], tab.nu_t.shape[1], tile), scale, tab.tol,
                            _ncc_exact(tab, hc),
                            low=low_precision(tab.low, "ncc", tab.nu_t, tab.nu_q, tab.tol))
    pred = yc.clone()
    rad = torch.index_select(tab.radius, 0, yc)
    unc = torch.nonzero(xn >= rad).flatten()  # ||x|| >= ||x V||: the others are decided
    if unc.numel() and proj is not None:  # screen again by ||x V|| itself
        pu = (proj if unc.numel() == yc.numel() else proj[unc]) * tab.s_ct
        keep = torch.linalg.vector_norm(pu, dim=1) >= rad[unc]
        if not bool(keep.all()):
            unc, pu = unc[keep], pu[keep]
    if unc.numel():
        every = unc.numel() == yc.numel()  # no copies of the rows when all are open
        hu, yu = (hc, yc) if every else (hc[unc], yc[unc])
        if proj is None:
            pu = (x if every else x[unc]) @ tab.v_t
        t = pu.add_(torch.index_select(tab.a_table, 0, yu))
        scale = tab.q_max + 2.0 * tab.su_max * torch.linalg.vector_norm(t, dim=1)
        dropped = 2.0 * tab.s_drop * (xn if every else xn[unc])  # the dropped spectrum
        idx = checked_best(t, tab.su_t, tab.q, False,
                           class_tile(t.shape[0], tab.su_t.shape[1], tile), scale, tab.tol,
                           _ncc_exact(tab, hu), dropped,
                           low_precision(tab.low, "ncc", tab.su_t, tab.q, tab.tol))
        if every:
            return torch.index_select(tab.stats.present, 0, idx)
        pred[unc] = tab.stats.present[idx]
    return pred
