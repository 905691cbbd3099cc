"""``NCAccumulator``: streaming, mergeable neural-collapse statistics (one or two passes)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from ncollapse import validation as V
from ncollapse.metrics.kernels import (
    _angles,
    _bulk_rows,
    _chunk_rows,
    _compute_dtype,
    _dist_active,
    _etf_error,
    _f,
    _gather_sub,
    _pair_sqdist,
    _pairs,
)
from ncollapse.metrics.result import NCMetrics

__all__ = ["NCAccumulator"]

_F64 = torch.float64
_STATE_VERSION = 1


class NCAccumulator:
    """Streaming, mergeable neural-collapse statistics over one or two passes of the data.

    Pass 1: ``update(features, labels, logits=None)`` per batch; ``compute()`` then gives every
    metric that needs only the class means (NC2, NC3, trace ratio, CDNV, accuracy, bias
    collapse); ``nc1`` needs ``full_covariance=True`` (a d x d within-class scatter) or pass 2,
    ``ncc_mismatch`` always needs pass 2. Pass 2: ``begin_second_pass()`` freezes the means,
    then ``update(...)`` again over the same data, then ``compute()`` gives everything.

    ``merge(other)`` combines two accumulators of the same pass exactly; ``sync()`` all-reduces
    the state over ``torch.distributed`` when it is initialized (a collective: call it on every
    rank; ``begin_second_pass()`` and ``compute()`` call it). Classifier decisions come from
    the ``logits`` passed to ``update`` or, without them, from ``weight``/``bias``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        weight: Any = None,
        bias: Any = None,
        ncc_means: Any = None,
        full_covariance: bool = False,
    ) -> None:
        if bias is not None and weight is None:
            raise ValueError("bias given without weight; pass the classifier weight too")
        self._num_classes_arg = num_classes
        self._weight_arg = weight
        self._bias_arg = bias
        self._ncc_arg = ncc_means
        self.full_covariance = bool(full_covariance)
        # Private switches used by measure(): skip what its own second pass recomputes.
        self._track_scatter = True
        self._classify_pass1 = True
        self._local = False
        self.reset()

    # ------------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Forget all data (keeps the constructor's configuration)."""
        self.phase = 1
        self.num_classes: int | None = None
        self.dim: int | None = None
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._ct: torch.dtype | None = None
        self._synced = False
        self._poisoned = False
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        self._ncc: torch.Tensor | None = None
        # pass 1
        self._shift: torch.Tensor | None = None
        self._have: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None
        self._ss: torch.Tensor | None = None
        self._scatter: torch.Tensor | None = None
        self._correct: torch.Tensor | None = None
        self._decided: torch.Tensor | None = None
        self._shift_logits: torch.Tensor | None = None
        # pass 2
        self._frozen: dict[str, Any] | None = None
        self._p2: dict[str, torch.Tensor] | None = None

    def _init(self, h: torch.Tensor, logits: torch.Tensor | None) -> None:
        dev = h.device
        d = int(h.shape[1])
        w = b = ncc = None
        if self._weight_arg is not None:
            w = V.check_matrix(self._weight_arg, "weight", (None, d),
                               "weight must be (C, d), one row per class", dev)
        if self._bias_arg is not None:
            b = V.check_matrix(self._bias_arg, "bias", (None,),
                               "bias must be (C,), one entry per class", dev)
        if self._ncc_arg is not None:
            ncc = V.check_matrix(self._ncc_arg, "ncc_means", (None, d),
                                 "ncc_means must be (C, d), one centre per class", dev)
        c = V.resolve_num_classes(self._num_classes_arg, None, w, b, logits, ncc)
        if c < 2:
            raise ValueError(f"need at least 2 classes, got num_classes = {c}")
        self.num_classes, self.dim, self.device = c, d, dev
        self.dtype = h.dtype
        self._ct = _compute_dtype(h.dtype)
        self._weight, self._bias, self._ncc = w, b, ncc
        self._shift = torch.zeros(c, d, dtype=_F64, device=dev)  # values from the input
        self._have = torch.zeros(c, dtype=torch.bool, device=dev)
        self._counts = torch.zeros(c, dtype=torch.int64, device=dev)
        self._sums = torch.zeros(c, d, dtype=_F64, device=dev)
        self._ss = torch.zeros(c, dtype=_F64, device=dev)
        if self.full_covariance:
            self._scatter = torch.zeros(d, d, dtype=_F64, device=dev)
        self._correct = torch.zeros((), dtype=torch.int64, device=dev)
        self._decided = torch.zeros((), dtype=torch.int64, device=dev)
        if w is not None:
            self._shift_logits = torch.zeros(c, c, dtype=_F64, device=dev)
            self._wmax = float(w.norm(dim=1).max())

    def _check_usable(self) -> None:
        if self._poisoned:
            raise RuntimeError(
                "a previous update() failed part-way, so this accumulator's state is "
                "incomplete; call reset() and feed the data again"
            )

    # ------------------------------------------------------------------ update

    def update(self, features: Any, labels: Any, logits: Any = None) -> None:
        """Add one batch: features (n, d), labels (n,), optional classifier logits (n, C)."""
        self._check_usable()
        h = V.check_features(features)
        if self.dim is not None and h.shape[1] != self.dim:
            raise ValueError(
                f"features have dimension {h.shape[1]} but earlier batches had {self.dim}; "
                f"every batch must come from the same layer"
            )
        lg = None
        if logits is not None:
            lg = V.as_tensor(logits, "logits")
        if self.dim is None:
            self._init(h, lg)
        assert self.device is not None and self.num_classes is not None and self._ct is not None
        if h.device != self.device or h.dtype != self._ct:
            h = h.to(device=self.device, dtype=self._ct)
        y = V.check_labels(labels, h.shape[0], self.device)
        V.check_label_range(y, self.num_classes)
        if lg is not None:
            lg = V.check_logits(lg, h.shape[0], self.num_classes, self.device)
        if self._synced and self.phase == 1 and _dist_active():
            raise RuntimeError(
                "update() after sync() in the same pass would count other ranks' data twice; "
                "call sync() once, after the last update of a pass"
            )
        self._ingest(h, y, lg)

    def _ingest(self, h: torch.Tensor, y: torch.Tensor, lg: torch.Tensor | None) -> None:
        """Add one validated batch (compute dtype and device, labels in range)."""
        self._synced = False
        try:
            if self.phase == 1:
                self._update1(h, y, lg)
            else:
                self._update2(h, y, lg)
        except BaseException:
            self._poisoned = True
            raise

    def _update1(self, h: torch.Tensor, y: torch.Tensor, lg: torch.Tensor | None) -> None:
        c, n = self.num_classes, h.shape[0]
        assert c is not None and self._have is not None and self._shift is not None
        bc = torch.bincount(y, minlength=c)
        new = (bc > 0) & ~self._have
        if bool(new.any()):
            first = torch.full((c,), n, dtype=torch.int64, device=self.device)
            first.scatter_reduce_(0, y, torch.arange(n, device=self.device), reduce="amin")
            cls = torch.nonzero(new).flatten()
            rows = h[first[cls]]
            if not bool(torch.isfinite(rows).all()):
                V.report_nonfinite(h, "features")
            self._shift[cls] = rows.to(_F64)
            self._have |= new
            if self._shift_logits is not None and (self._classify_pass1 or not self._local):
                self._shift_logits[cls] = self._table(rows.to(_F64))
        classify = self._classify_pass1 and (lg is not None or self._weight is not None)
        chan = self._track_scatter or self.full_covariance
        step = _chunk_rows(self.dim)
        if classify and lg is None:
            t64 = self._shift_logits - self._shift_logits.diagonal()[:, None]
            self._p1_table = (t64.to(self._ct), t64.abs().amax(1).to(self._ct))
            self._p1_wt = self._weight.T.to(self._ct).contiguous()
        # Few classes: float32 differences (at the spread scale) summed in float32 per slot of
        # ``step`` rows (a few dozen terms per class), the slots then summed in float64. Many
        # slots share one index_add_ over a large chunk (few, large operations).
        fast = (not chan and not classify and self._ct == torch.float32
                and c * 16 <= step)
        if fast:
            shift_ct = self._shift.to(self._ct)
            big = _bulk_rows(self.dim, step, n)
            nslot = -(-big // step)
            part = torch.zeros(nslot * c, self.dim, dtype=self._ct, device=self.device)
            slot_of = torch.arange(big, device=self.device).div_(step, rounding_mode="floor")
            slot_of.mul_(c)
            for i in range(0, n, big):
                hc, yc = h[i:i + big], y[i:i + big]
                dl = _gather_sub(hc, shift_ct, yc)
                part.index_add_(0, torch.add(slot_of[:yc.shape[0]], yc), dl)
                self._sums += part.view(nslot, c, self.dim).sum(0, dtype=_F64)
                if i + big < n:
                    part.zero_()
        for i in range(0, 0 if fast else n, step):
            hc, yc = h[i:i + step], y[i:i + step]
            dl = _gather_sub(hc, self._shift, yc)  # float64, exact for float32 inputs
            if chan:
                self._chan_update(dl, yc)
            else:
                self._sums.index_add_(0, yc, dl)
            if classify:
                pred = self._classify(hc, yc, dl, None if lg is None else lg[i:i + step],
                                      pass2=False)
                self._correct += (pred == yc).sum()
                self._decided += yc.numel()
        if not chan:
            self._counts += bc
        if not bool(torch.isfinite(self._sums[bc > 0]).all()):
            V.report_nonfinite(h, "features")

    def _table(self, points: torch.Tensor) -> torch.Tensor:
        """Rows W p + b for each row p of ``points`` (float64), the logits at those points."""
        assert self._weight is not None
        t = points @ self._weight.T
        if self._bias is not None:
            t = t + self._bias
        return t

    def _chan_update(self, dl: torch.Tensor, yc: torch.Tensor) -> None:
        """Merge a chunk's per-class sums and centred sums of squares (Chan et al.)."""
        cls, inv = torch.unique(yc, return_inverse=True)
        k = cls.numel()
        nb = torch.bincount(inv, minlength=k).to(_F64)
        sb = torch.zeros(k, dl.shape[1], dtype=_F64, device=dl.device).index_add_(0, inv, dl)
        mb = sb / nb[:, None]
        dev = dl - mb[inv]
        ssb = torch.zeros(k, dtype=_F64, device=dl.device).index_add_(0, inv, (dev * dev).sum(1))
        na = self._counts[cls].to(_F64)
        ma = self._sums[cls] / na.clamp(min=1.0)[:, None]
        wgt = na * nb / (na + nb)
        delta = ma - mb
        self._ss[cls] += ssb + wgt * (delta * delta).sum(1)
        if self._scatter is not None:
            self._scatter += dev.T @ dev + (delta * wgt[:, None]).T @ delta
        self._sums[cls] += sb
        self._counts[cls] += nb.to(torch.int64)

    # ------------------------------------------------------------------ decisions

    def _tol(self) -> float:
        assert self._ct is not None and self.dim is not None
        return (8.0 * math.sqrt(self.dim) + 8.0) * torch.finfo(self._ct).eps

    def _checked_arg(self, scores: torch.Tensor, scale: torch.Tensor, exact, largest: bool
                     ) -> torch.Tensor:
        """Arg-max/min per row; rows whose top two are within rounding are redone in float64."""
        if scores.shape[1] == 1:
            return torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
        best, idx = scores.max(1) if largest else scores.min(1)
        if self._ct == _F64:
            return idx
        fill = -math.inf if largest else math.inf
        rest = scores.scatter(1, idx[:, None], fill)
        second = rest.amax(1) if largest else rest.amin(1)
        gap = (best - second).abs()
        amb = torch.nonzero(gap <= self._tol() * scale).flatten()
        if amb.numel():
            ex = exact(amb)
            idx[amb] = ex.argmax(1) if largest else ex.argmin(1)
        return idx

    def _classify(self, hc: torch.Tensor, yc: torch.Tensor, dl: torch.Tensor,
                  lg: torch.Tensor | None, pass2: bool, prod: torch.Tensor | None = None,
                  dnorm: torch.Tensor | None = None) -> torch.Tensor | None:
        """Classifier decisions for a chunk: from logits, else from W, b (None without either).

        ``dl`` is h - a_y for per-class anchors a (shifts in pass 1, means in pass 2) and
        ``prod`` (optional) is dl @ W^T already computed.
        """
        if lg is not None:
            return lg.argmax(1)
        if self._weight is None:
            return None
        ct = self._ct
        if pass2:
            assert self._frozen is not None
            fz = self._frozen
            if "T" not in fz:  # built on first use (not needed when logits are given)
                t64 = self._table(fz["anchor"].to(_F64))
                t64 = t64 - t64.diagonal()[:, None]
                fz.update(T=t64.to(ct), Tscale=t64.abs().amax(1).to(ct))
            table, tscale = fz["T"], fz["Tscale"]
        else:
            table, tscale = self._p1_table
        if prod is None:
            dl = dl.to(ct)
            prod = dl @ self._p1_wt
        vals = prod + torch.index_select(table, 0, yc)
        if dnorm is None:
            dnorm = torch.linalg.vector_norm(dl, dim=1)
        scale = torch.index_select(tscale, 0, yc) + self._wmax * dnorm

        def exact(rows: torch.Tensor) -> torch.Tensor:
            return self._table(hc[rows].to(_F64))

        return self._checked_arg(vals, scale, exact, largest=True)

    # ------------------------------------------------------------------ means

    def _mean_stats(self, warn: bool = True) -> dict[str, Any]:
        """Class means and everything derived from them alone (float64)."""
        if self._counts is None or int(self._counts.sum()) == 0:
            raise RuntimeError("no data yet: call update(features, labels) first")
        assert self._shift is not None and self._sums is not None and self.dim is not None
        counts = self._counts
        present = torch.nonzero(counts > 0).flatten()
        cp = int(present.numel())
        V.require_two_classes(cp)
        if warn:
            self._warn(counts, cp)
        sel = slice(None) if cp == counts.shape[0] else present  # views when all are present
        n = counts[sel].to(_F64)
        total = int(counts.sum())
        sh = self._shift[sel].to(_F64)
        m = self._sums[sel] / n[:, None]
        mu = sh + m
        a = (sh - sh[0]) + m
        a_g = (n[:, None] * a).sum(0) / total
        mt = a - a_g
        mu_g = sh[0] + a_g
        return {"present": present, "sel": sel, "cp": cp, "n": n, "N": total, "mu": mu,
                "mt": mt, "mu_g": mu_g}

    def _warn(self, counts: torch.Tensor, cp: int) -> None:
        assert self.dim is not None
        V.warn_absent_classes(counts)
        V.warn_low_dimension(self.dim, cp)

    @staticmethod
    def _spectrum(mt: torch.Tensor, gram: torch.Tensor | None = None) -> dict[str, Any]:
        """M~ = U S V^T truncated to the top min(C-1, rank) singular triplets (float64).

        A direct SVD up to C^2 d = 2^27; above that the eigendecomposition of the C x C Gram
        matrix (relative accuracy eps * cond(M~)^2 on S, like an eigendecomposition of Sigma_B).
        """
        cp, d = mt.shape
        eps = torch.finfo(_F64).eps
        if cp * cp * d <= 1 << 27 or gram is None:
            if cp < d:  # LAPACK is faster on the tall transpose: M~^T = V S U^T
                v, s, uh = torch.linalg.svd(mt.T, full_matrices=False)
                u = uh.T
            else:
                u, s, vh = torch.linalg.svd(mt, full_matrices=False)
                v = vh.T
            tol = float(s[0]) * max(cp, d) * eps
        else:
            lam, u = torch.linalg.eigh(gram)
            lam, u = lam.flip(0), u.flip(1)
            s = lam.clamp(min=0.0).sqrt()
            tol = float(s[0]) * math.sqrt(max(cp, d) * eps) * 4
            keep = int((s > tol).sum())
            u, s = u[:, :keep], s[:keep]
            v = (mt.T @ u) / s
        rank = int((s > tol).sum())
        k = max(1, min(cp - 1, rank))
        s_drop = float(s[k]) if k < s.numel() else 0.0
        return {"u": u[:, :k], "s": s[:k], "v": v[:, :k].contiguous(), "k": k,
                "s_drop": s_drop}

    # ------------------------------------------------------------------ pass 2

    def begin_second_pass(self) -> None:
        """Freeze the (synced) class means; following ``update`` calls are pass 2."""
        self._check_usable()
        if self.phase != 1:
            raise RuntimeError("begin_second_pass() was already called; call reset() to start over")
        if self._counts is None or int(self._counts.sum()) == 0:
            raise RuntimeError("begin_second_pass() before any data: run pass 1 (update) first")
        if not self._local:
            self.sync()
        self._freeze()
        self.phase = 2
        self._synced = False
        dev = self.device
        c = self.num_classes
        assert c is not None
        self._p2 = {
            "counts": torch.zeros(c, dtype=torch.int64, device=dev),
            "ss": torch.zeros(c, dtype=_F64, device=dev),
            "nc1": torch.zeros((), dtype=_F64, device=dev),
            "mismatch": torch.zeros((), dtype=torch.int64, device=dev),
            "compared": torch.zeros((), dtype=torch.int64, device=dev),
            "correct": torch.zeros((), dtype=torch.int64, device=dev),
            "decided": torch.zeros((), dtype=torch.int64, device=dev),
        }

    def _freeze(self) -> None:
        """Tables for pass 2, all derived from the pass-1 state (deterministic).

        Pass 2 works with x = h - a_y where the anchor a_y is mu_y rounded to the compute
        dtype; e_y = mu_y - a_y is tiny and enters only through exact per-class corrections.
        """
        st = self._mean_stats(warn=False)
        ct, dev, c, d = self._ct, self.device, self.num_classes, self.dim
        assert ct is not None and c is not None and d is not None
        present, sel, cp, mt = st["present"], st["sel"], st["cp"], st["mt"]
        gram = mt @ mt.T
        sp = self._spectrum(mt, gram)
        dmat = _pair_sqdist(mt, gram)
        mu = torch.zeros(c, d, dtype=_F64, device=dev)
        mu[sel] = st["mu"]
        anchor = mu.to(ct)
        a64 = anchor.to(_F64)
        e = mu - a64
        ev = e @ sp["v"]
        pos = torch.full((c,), -1, dtype=torch.int64, device=dev)
        pos[sel] = torch.arange(cp, device=dev)
        fz: dict[str, Any] = {
            "present": present, "pos": pos, "anchor": anchor, "mu": mu, "mt": mt,
            "gram": gram, "dmat": dmat, "k": sp["k"], "v": sp["v"],
            "s": sp["s"], "inv_s": (1.0 / sp["s"]).to(ct), "s_max": float(sp["s"][0]),
            "s_drop": sp["s_drop"],
            "nc1_corr": ((ev / sp["s"]) ** 2).sum(1), "ss_corr": (e * e).sum(1), "B": {},
            "st": st,
        }
        if self._ncc is None:
            off = dmat + torch.diag(torch.full((cp,), math.inf, dtype=_F64, device=dev))
            rho = off.amin(1).sqrt()
            radius = torch.zeros(c, dtype=_F64, device=dev)
            radius[sel] = (0.5 * (1 - 1e-3) * rho - 2.0 * sp["s_drop"]
                           - ev[sel].norm(dim=1))
            # ||a_y - mu_c||^2 = ||mu_y - mu_c||^2 - 2 e_y.(mt_y - mt_c) + ||e_y||^2
            ge = e[sel] @ mt.T
            da = dmat - 2.0 * (ge.diagonal()[:, None] - ge) + (e[sel] ** 2).sum(1)[:, None]
            dy = torch.zeros(c, cp, dtype=_F64, device=dev)
            dy[sel] = da
            fz.update(radius=radius.to(ct), Dy=dy.to(ct), Dscale=dy.abs().amax(1).to(ct),
                      SUt=(sp["u"] * sp["s"]).T.contiguous().to(ct))
        else:
            nu = self._ncc
            nbar = nu.mean(0)
            nut = nu - nbar
            d2 = torch.zeros(c, c, dtype=_F64, device=dev)
            ap = a64[sel]
            if cp * c * d <= 1 << 24:
                d2[sel] = ((ap[:, None, :] - nu[None, :, :]) ** 2).sum(-1)
            else:
                ac = ap - nbar
                d2[sel] = ((ac * ac).sum(1)[:, None] + (nut * nut).sum(1)[None, :]
                           - 2.0 * ac @ nut.T)
            d2_exact = torch.zeros(c, c, dtype=_F64, device=dev)
            muc = st["mu"] - nbar
            d2_exact[sel] = ((muc * muc).sum(1)[:, None] + (nut * nut).sum(1)[None, :]
                             - 2.0 * muc @ nut.T)
            fz.update(D2=d2.to(ct), D2scale=d2.abs().amax(1).to(ct), nut=nut,
                      d2_64=d2_exact, nu_max=float(nut.norm(dim=1).max()))
        self._frozen = fz

    def _basis(self, with_weight: bool) -> torch.Tensor:
        """Columns of the pass-2 product: [V_k | (nu - mean nu)^T | W^T], compute dtype."""
        fz = self._frozen
        assert fz is not None and self._ct is not None
        key = bool(with_weight)
        if key not in fz["B"]:
            cols = [fz["v"]]
            if self._ncc is not None:
                cols.append(fz["nut"].T)
            if with_weight:
                assert self._weight is not None
                cols.append(self._weight.T)
            rows = torch.cat(cols, dim=1).T.to(self._ct)
            width = rows.shape[0]
            mult = 8 if width < 64 else 16
            if width % mult:  # BLAS runs faster with a padded, row-major (columns x d) operand
                pad = torch.zeros(mult - width % mult, rows.shape[1], dtype=rows.dtype,
                                  device=rows.device)
                rows = torch.cat([rows, pad], dim=0)
            fz["B"][key] = rows.contiguous().T
        return fz["B"][key]

    def _update2(self, h: torch.Tensor, y: torch.Tensor, lg: torch.Tensor | None) -> None:
        fz, p2 = self._frozen, self._p2
        assert fz is not None and p2 is not None and self.num_classes is not None
        c = self.num_classes
        counts = torch.bincount(y, minlength=c)
        if bool(counts[fz["pos"] < 0].any()):
            first = int(torch.nonzero(fz["pos"][y] < 0)[0, 0])
            raise ValueError(
                f"pass 2 got label {int(y[first])} (index {first}), a class that had no samples "
                f"in pass 1; pass 2 must see the same data as pass 1"
            )
        use_w = self._weight is not None and lg is None
        classify = use_w or lg is not None
        basis = self._basis(use_w)
        k = fz["k"]
        k2 = k
        nn = 0 if self._ncc is None else c
        inv_s = fz["inv_s"]
        step = _chunk_rows(self.dim, basis.shape[1])
        n, dev, ct = h.shape[0], self.device, self._ct
        # per-sample results go to buffers, reduced once after the loop (fewer small ops)
        xn_all = torch.empty(n, dtype=ct, device=dev)
        q_all = torch.empty(n, dtype=ct, device=dev)
        ncc_all = torch.empty(n, dtype=torch.int64, device=dev)
        pred_all = torch.empty(n, dtype=torch.int64, device=dev) if classify else None
        # Narrow products (few classes) go to one buffer and the decisions run once on all
        # rows (far fewer small operations); wide ones are decided chunk by chunk.
        bulk = n * basis.shape[1] <= 1 << 24
        if bulk:
            prod_all = torch.empty(n, basis.shape[1], dtype=ct, device=dev)
            step = _bulk_rows(self.dim, step, n)
            for i in range(0, n, step):
                x = _gather_sub(h[i:i + step], fz["anchor"], y[i:i + step])
                torch.linalg.vector_norm(x, dim=1, out=xn_all[i:i + step])
                torch.mm(x, basis, out=prod_all[i:i + step])
            chunks = [(0, n, prod_all)]
        else:
            chunks = range(0, n, step)
        for item in chunks:
            if bulk:
                i, j, prod = item
                x = None
            else:
                i, j = item, item + step
                x = _gather_sub(h[i:j], fz["anchor"], y[i:j])
                torch.linalg.vector_norm(x, dim=1, out=xn_all[i:j])
                prod = x @ basis
            hc, yc, xn = h[i:j], y[i:j], xn_all[i:j]
            proj = prod[:, :k]
            pw = proj * inv_s
            torch.linalg.vecdot(pw, pw, out=q_all[i:j])
            ncc_all[i:j] = self._ncc_decide(hc, yc, proj, prod[:, k2:k2 + nn], xn)
            if classify:
                pred_all[i:j] = self._classify(
                    hc, yc, x, None if lg is None else lg[i:j], pass2=True,
                    prod=prod[:, k2 + nn:k2 + nn + c] if use_w else None, dnorm=xn)
        nc1 = q_all.sum(dtype=_F64)
        ss = torch.zeros_like(p2["ss"]).index_add_(0, y, xn_all.to(_F64).square_())
        if not bool(torch.isfinite(nc1)) or not bool(torch.isfinite(ss).all()):
            V.report_nonfinite(h, "features")
        p2["nc1"] += nc1
        p2["ss"] += ss
        p2["counts"] += counts
        if classify:
            p2["mismatch"] += (pred_all != ncc_all).sum()
            p2["correct"] += (pred_all == y).sum()
            p2["compared"] += n
            p2["decided"] += n

    def _ncc_decide(self, hc: torch.Tensor, yc: torch.Tensor, proj: torch.Tensor,
                    nuprod: torch.Tensor, xn: torch.Tensor) -> torch.Tensor:
        """Nearest-class-centre decisions (class indices) for a chunk with x = h - a_y."""
        fz = self._frozen
        assert fz is not None

        def exact_r(rows: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
            return hc[rows].to(_F64) - torch.index_select(fz["mu"], 0, ys)

        if self._ncc is not None:
            scores = torch.index_select(fz["D2"], 0, yc) - 2.0 * nuprod
            scale = torch.index_select(fz["D2scale"], 0, yc) + 2.0 * fz["nu_max"] * xn

            def exact_nu(rows: torch.Tensor) -> torch.Tensor:
                ys = yc[rows]
                return fz["d2_64"][ys] - 2.0 * (exact_r(rows, ys) @ fz["nut"].T)

            return self._checked_arg(scores, scale, exact_nu, largest=False)
        pred = yc.clone()
        pn = torch.linalg.vector_norm(proj, dim=1)
        unc = torch.nonzero(pn >= torch.index_select(fz["radius"], 0, yc)).flatten()
        if unc.numel():
            yu = yc[unc]
            scores = torch.addmm(torch.index_select(fz["Dy"], 0, yu), proj[unc], fz["SUt"],
                                 alpha=-2.0)
            scale = (torch.index_select(fz["Dscale"], 0, yu) + 2.0 * fz["s_max"] * pn[unc]
                     + 2.0 * fz["s_drop"] * xn[unc] / self._tol())

            def exact(rows: torch.Tensor) -> torch.Tensor:
                ys = yu[rows]
                r = hc[unc[rows]].to(_F64) - torch.index_select(fz["mu"], 0, ys)
                return fz["dmat"][fz["pos"][ys]] - 2.0 * (r @ fz["mt"].T)

            idx = self._checked_arg(scores, scale, exact, largest=False)
            pred[unc] = fz["present"][idx]
        return pred

    # ------------------------------------------------------------------ results

    def compute(self, weight: Any = None, bias: Any = None) -> NCMetrics:
        """The metrics from the data seen so far (see the class docstring for what needs pass 2).

        ``weight``/``bias`` (optional) replace the constructor's classifier for NC2/NC3 and
        bias collapse. Under torch.distributed this syncs first: call it on every rank.
        """
        self._check_usable()
        if self.dim is None:
            raise RuntimeError("compute() before any data: call update(features, labels) first")
        if not self._local:
            self.sync()
        if self.phase == 2:  # the means are frozen: reuse the statistics of _freeze()
            st = self._frozen["st"]
            self._warn(self._counts, st["cp"])
        else:
            st = self._mean_stats(warn=True)
        dev = self.device
        w, b = self._weight, self._bias
        if weight is not None:
            w = V.check_matrix(weight, "weight", (self.num_classes, self.dim),
                               "weight must be (C, d), one row per class", dev)
            b = None
        if bias is not None:
            if w is None:
                raise ValueError("bias given without weight; pass the classifier weight too")
            b = V.check_matrix(bias, "bias", (self.num_classes,),
                               "bias must be (C,), one entry per class", dev)
        cp, n, total = st["cp"], st["n"], st["N"]
        mt = st["mt"]
        if self.phase == 2:
            gram, dmat = self._frozen["gram"], self._frozen["dmat"]
        else:
            gram = mt @ mt.T
            dmat = _pair_sqdist(mt, gram)
        out = NCMetrics(num_classes=cp, num_samples=total, dim=int(self.dim))
        out.equinorm_means, out.equiangular_means, out.maxangle_means, out.etf_error_means = (
            _angles(mt, gram))
        ss = None
        if self.phase == 2:
            assert self._p2 is not None and self._counts is not None
            if not torch.equal(self._p2["counts"], self._counts):
                raise ValueError(
                    f"pass 2 saw {int(self._p2['counts'].sum())} samples with per-class counts "
                    f"different from pass 1 ({total} samples); both passes must see the same data"
                )
            fz = self._frozen
            cnt = self._counts.to(_F64)
            ss = (self._p2["ss"] - cnt * fz["ss_corr"])[st["sel"]]
            out.nc1 = _f((self._p2["nc1"] - (cnt * fz["nc1_corr"]).sum()) / total)
            if int(self._p2["compared"]) == total:
                out.ncc_mismatch = _f(self._p2["mismatch"].to(_F64) / total)
            if int(self._p2["decided"]) == total:
                out.accuracy = _f(self._p2["correct"].to(_F64) / total)
        elif self._track_scatter or self.full_covariance:
            assert self._ss is not None
            ss = self._ss[st["sel"]]
        if out.accuracy is None and self._decided is not None and int(self._decided) == total:
            out.accuracy = _f(self._correct.to(_F64) / total)
        if self.phase == 1 and self._scatter is not None:
            sp = self._spectrum(mt, gram)
            vv = sp["v"]
            quad = ((self._scatter @ vv) * vv).sum(0)
            out.nc1 = _f((quad / sp["s"] ** 2).sum() / total)
        if ss is not None:
            tr_w = ss.sum() / total
            tr_b = (mt * mt).sum() / cp
            out.nc1_trace_ratio = _f(tr_w / tr_b)
            var = ss / n
            iu = _pairs(cp, dev)
            out.cdnv = _f(((var[iu[0]] + var[iu[1]]) / (2.0 * dmat[iu[0], iu[1]])).mean())
        if w is not None:
            wp = w[st["sel"]]
            (out.equinorm_weights, out.equiangular_weights, out.maxangle_weights,
             out.etf_error_weights) = _angles(wp)
            diff = wp / torch.linalg.matrix_norm(wp) - mt / torch.linalg.matrix_norm(mt)
            out.self_duality = _f((diff * diff).sum())
            out.self_duality_etf_error = _etf_error(wp @ mt.T)
            bc = w @ st["mu_g"]
            if b is not None:
                bc = bc + b
            out.bias_collapse = _f(torch.linalg.vector_norm(bc))
        return out

    # ------------------------------------------------------------------ combining

    def merge(self, other: NCAccumulator) -> None:
        """Add ``other``'s data to this accumulator, exactly (both in the same pass)."""
        self._check_usable()
        other._check_usable()
        if not isinstance(other, NCAccumulator):
            raise TypeError(f"merge() takes an NCAccumulator, got {type(other).__name__}")
        if other.dim is None:
            return
        if self.dim is None:
            self.load_state_dict(other.state_dict())
            return
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge accumulators of different shapes: (C, d) = "
                f"{(self.num_classes, self.dim)} vs {(other.num_classes, other.dim)}"
            )
        if other.phase != self.phase:
            raise RuntimeError(
                f"cannot merge an accumulator in pass {other.phase} into one in pass "
                f"{self.phase}; merge after the same pass"
            )
        if self.phase == 1:
            o = other._state1_on(self.device)
            self._combine1(o["shift"], o["have"], o["counts"], o["sums"], o["ss"],
                           o["scatter"], o["correct"], o["decided"])
        else:
            assert self._frozen is not None and other._frozen is not None
            if not torch.equal(self._frozen["mu"], other._frozen["mu"].to(self.device)):
                raise ValueError("cannot merge pass-2 accumulators whose frozen means differ; "
                                 "merge (or sync) the pass-1 states before begin_second_pass()")
            for key, val in other._p2.items():
                self._p2[key] += val.to(self.device)
        self._synced = False

    def _state1_on(self, dev: torch.device | None) -> dict[str, Any]:
        return {
            "shift": self._shift.to(dev), "have": self._have.to(dev),
            "counts": self._counts.to(dev), "sums": self._sums.to(dev), "ss": self._ss.to(dev),
            "scatter": None if self._scatter is None else self._scatter.to(dev),
            "correct": self._correct.to(dev), "decided": self._decided.to(dev),
        }

    def _combine1(self, shift, have, counts, sums, ss, scatter, correct, decided) -> None:
        """Chan merge of another pass-1 state (given on this device) into this one."""
        adopt = have & ~self._have
        if bool(adopt.any()):
            self._shift[adopt] = shift[adopt]
            self._have |= adopt
            if self._shift_logits is not None:
                self._shift_logits[adopt] = self._table(shift[adopt].to(_F64))
        # re-express the other's sums relative to this state's shifts
        nb = counts.to(_F64)
        sums = sums + nb[:, None] * (shift.to(_F64) - self._shift.to(_F64))
        sums = torch.where((counts > 0)[:, None], sums, torch.zeros_like(sums))
        na = self._counts.to(_F64)
        tot = (na + nb).clamp(min=1.0)
        delta = self._sums / na.clamp(min=1.0)[:, None] - sums / nb.clamp(min=1.0)[:, None]
        wgt = torch.where((na > 0) & (nb > 0), na * nb / tot, torch.zeros_like(na))
        self._ss += ss + wgt * (delta * delta).sum(1)
        if self._scatter is not None and scatter is not None:
            self._scatter += scatter + (delta * wgt[:, None]).T @ delta
        self._sums += sums
        self._counts += counts
        self._correct += correct
        self._decided += decided

    def sync(self) -> None:
        """All-reduce the state over torch.distributed (a collective; no-op when not initialized).

        Exact: each class's shift is taken from the lowest rank that saw the class, every rank
        re-expresses its sums relative to it, then counts and sums are all-reduced and the
        within-class scatter is combined with Chan's correction.
        """
        if self._synced or not _dist_active():
            self._synced = True
            return
        self._check_usable()
        if self.dim is None:
            raise RuntimeError("sync(): this rank has seen no data; every rank needs at least "
                               "one update() before sync()")
        if self.phase == 1:
            self._sync1()
        else:
            assert self._p2 is not None
            for val in self._p2.values():
                dist.all_reduce(val)
        self._synced = True

    def _sync1(self) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        owner = torch.where(self._have, rank, world).to(torch.int64)
        dist.all_reduce(owner, op=dist.ReduceOp.MIN)
        mine = (owner == rank)[:, None]
        common = torch.where(mine, self._shift, torch.zeros_like(self._shift))
        dist.all_reduce(common)
        n_loc = self._counts.to(_F64)
        sums = self._sums + n_loc[:, None] * (self._shift.to(_F64) - common.to(_F64))
        sums = torch.where((self._counts > 0)[:, None], sums, torch.zeros_like(sums))
        self._shift = common
        self._have = owner < world
        if self._shift_logits is not None:
            self._shift_logits = self._table(common.to(_F64))
        m_loc = sums / n_loc.clamp(min=1.0)[:, None]
        counts = self._counts.clone()
        dist.all_reduce(counts)
        dist.all_reduce(sums)
        m_glob = sums / counts.to(_F64).clamp(min=1.0)[:, None]
        delta = m_loc - m_glob
        ss = self._ss + n_loc * (delta * delta).sum(1)
        dist.all_reduce(ss)
        if self._scatter is not None:
            sc = self._scatter + (delta * n_loc[:, None]).T @ delta
            dist.all_reduce(sc)
            self._scatter = sc
        for t in (self._correct, self._decided):
            dist.all_reduce(t)
        self._counts, self._sums, self._ss = counts, sums, ss

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain dict of tensors and numbers; restores with ``load_state_dict``."""
        sd: dict[str, Any] = {"version": _STATE_VERSION, "phase": self.phase,
                              "num_classes": self.num_classes, "dim": self.dim,
                              "dtype": None if self.dtype is None else str(self.dtype),
                              "full_covariance": self.full_covariance,
                              "track_scatter": self._track_scatter,
                              "classify_pass1": self._classify_pass1}
        if self.dim is not None:
            sd.update({k: (None if v is None else v.detach().clone())
                       for k, v in self._state1_on(self.device).items()})
        if self._p2 is not None:
            sd["pass2"] = {k: v.clone() for k, v in self._p2.items()}
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a state from ``state_dict`` (same classifier configuration expected)."""
        if sd.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported NCAccumulator state version {sd.get('version')!r}")
        self.reset()
        self._track_scatter = bool(sd["track_scatter"])
        self._classify_pass1 = bool(sd["classify_pass1"])
        if sd["dim"] is None:
            return
        if bool(sd["full_covariance"]) != self.full_covariance:
            raise ValueError("state was saved with full_covariance="
                             f"{sd['full_covariance']}; construct the accumulator the same way")
        dtype = getattr(torch, str(sd["dtype"]).replace("torch.", ""))
        shift = sd["shift"]
        probe = torch.zeros(1, int(sd["dim"]), dtype=dtype, device=shift.device)
        saved_c = self._num_classes_arg
        self._num_classes_arg = int(sd["num_classes"])
        try:
            self._init(probe, None)
        finally:
            self._num_classes_arg = saved_c
        dev = self.device
        self._shift = shift.to(dev, _F64).clone()
        self._have = sd["have"].to(dev).clone()
        self._counts = sd["counts"].to(dev).clone()
        self._sums = sd["sums"].to(dev, _F64).clone()
        self._ss = sd["ss"].to(dev, _F64).clone()
        if self.full_covariance:
            self._scatter = sd["scatter"].to(dev, _F64).clone()
        self._correct = sd["correct"].to(dev).clone()
        self._decided = sd["decided"].to(dev).clone()
        if self._shift_logits is not None:
            self._shift_logits = self._table(self._shift.to(_F64))
        if int(sd["phase"]) == 2:
            self._freeze()
            self.phase = 2
            self._p2 = {k: v.to(dev).clone() for k, v in sd["pass2"].items()}

