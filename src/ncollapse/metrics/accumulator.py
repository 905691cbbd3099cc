"""``NCAccumulator``: streaming, mergeable neural-collapse statistics (one or two passes)."""

from __future__ import annotations

from typing import Any

import torch

from ncollapse import validation as V
from ncollapse.metrics import state as S
from ncollapse.metrics.kernels import compute_dtype, decision_tol, dist_active, spectrum
from ncollapse.metrics.pairwise import DEFAULT_TILE, cdnv, cross_etf_error
from ncollapse.metrics.per_class import per_class_stats
from ncollapse.metrics.result import NCMetrics
from ncollapse.metrics.tables import (
    Classifier,
    MeanStats,
    Pass2Tables,
    build_pass2,
    mean_stats,
)
from ncollapse.metrics.updates import (
    classify,
    low_precision,
    update_ood,
    update_pass1,
    update_pass2,
)

__all__ = ["NCAccumulator"]

_F64 = torch.float64
_STATE_VERSION = 2


class NCAccumulator:
    """Streaming, mergeable neural-collapse statistics over one or two passes of the data.

    Pass 1: ``update(features, labels, logits=None)`` per batch; ``compute()`` then gives every
    metric that needs only the class means (NC2, NC3, trace ratio, CDNV, accuracy, bias
    collapse, hyperspherical energy, duality); ``nc1`` needs ``full_covariance=True`` (a d x d
    within-class scatter) or pass 2, ``ncc_mismatch`` always needs pass 2. Pass 2:
    ``begin_second_pass()`` freezes the means, then ``update(...)`` again over the same data,
    then ``compute()`` gives everything. ``update_ood(features)`` (pass 1) adds
    out-of-distribution features for ``ood_orthogonality``.

    Options: ``second_pass=True`` promises a second pass, so pass 1 only accumulates the class
    means (faster; ``compute()`` then needs pass 2); ``distributed=False`` never syncs over
    torch.distributed; ``tile_size`` sets the classes per tile of the decisions and caps the
    blocks of the pairwise statistics (at most 512 rows anyway): memory O(C d + batch tile +
    tile^2), default automatic; ``per_class=True``
    attaches ``NCMetrics.per_class`` (``ncollapse.metrics.per_class.PerClassStats``).

    ``merge(other)`` combines two accumulators of the same pass exactly; ``sync()`` all-reduces
    the state over ``torch.distributed`` when it is initialized (a collective: call it on every
    rank; ``begin_second_pass()`` and ``compute()`` call it). Classifier decisions come from
    the ``logits`` passed to ``update`` or, without them, from ``weight``/``bias``.
    """

    def __init__(self, num_classes: int | None = None, weight: Any = None, bias: Any = None,
                 ncc_means: Any = None, full_covariance: bool = False, *,
                 second_pass: bool = False, distributed: bool = True,
                 tile_size: int | None = None, per_class: bool = False) -> None:
        if bias is not None and weight is None:
            raise ValueError("bias given without weight; pass the classifier weight too")
        if tile_size is not None and (isinstance(tile_size, bool) or int(tile_size) < 1):
            raise ValueError(f"tile_size must be a positive int or None, got {tile_size!r}")
        self._num_classes_arg = num_classes
        self._weight_arg, self._bias_arg, self._ncc_arg = weight, bias, ncc_means
        self.full_covariance = bool(full_covariance)
        self.second_pass = bool(second_pass)
        self.distributed = bool(distributed)
        self.tile_size = None if tile_size is None else int(tile_size)
        self.per_class = bool(per_class)
        self._options = {"full_covariance": self.full_covariance,
                         "track_spread": not self.second_pass or self.full_covariance,
                         "classify_pass1": not self.second_pass}
        self._specs1 = S.enabled(S.PASS1, self._options)
        self._prints = {k: S.fingerprint(v) for k, v in
                        (("weight", weight), ("bias", bias), ("ncc_means", ncc_means))}
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
        self._state: dict[str, torch.Tensor] | None = None
        self._state2: dict[str, torch.Tensor] | None = None
        self._tables: Pass2Tables | None = None
        self._clf: Classifier | None = None
        self._ncc: torch.Tensor | None = None
        self._g1: torch.Tensor | None = None  # pass-1 reference point of the decisions
        self._low1: dict = {}  # its bfloat16 scores (updates.low_precision), built on first use
        self._synced = False
        self._closed = False  # pass 2 closed by compute() or sync()
        self._poisoned = False

    @property
    def _tile(self) -> int:
        return self.tile_size or DEFAULT_TILE

    def _tol(self, depth: int) -> float:
        assert self._ct is not None
        return decision_tol(self._ct, depth)

    def _init(self, d: int, dev: torch.device, dtype: torch.dtype,
              logits: torch.Tensor | None, num_classes: int | None = None) -> None:
        w = b = None
        if self._weight_arg is not None:
            w = V.check_matrix(self._weight_arg, "weight", (None, d),
                               "weight must be (C, d), one row per class", dev)
        if self._bias_arg is not None:
            b = V.check_matrix(self._bias_arg, "bias", (None,),
                               "bias must be (C,), one entry per class", dev)
        if self._ncc_arg is not None:
            self._ncc = V.check_matrix(self._ncc_arg, "ncc_means", (None, d),
                                       "ncc_means must be (C, d), one centre per class", dev)
        given = self._num_classes_arg if self._num_classes_arg is not None else num_classes
        c = V.resolve_num_classes(given, None, w, b, logits, self._ncc)
        if num_classes is not None and c != num_classes:
            raise ValueError(f"the saved state has C = {num_classes} classes but this "
                             f"accumulator has C = {c}; construct it with the same classifier")
        V.check_class_count(c, d, compute_dtype(dtype), dev)
        self.num_classes, self.dim, self.device, self.dtype = c, d, dev, dtype
        self._ct = compute_dtype(dtype)
        self._clf = None if w is None else Classifier.make(w, b, self._ct)
        self._state = S.new_state(self._specs1, {"C": c, "d": d}, dev)

    def _check_usable(self) -> None:
        if self._poisoned:
            raise RuntimeError(
                "a previous update() failed part-way, so this accumulator's state is "
                "incomplete; call reset() and feed the data again"
            )

    def _sync_on(self) -> bool:
        return self.distributed and dist_active()

    # ------------------------------------------------------------------ update

    def _features(self, features: Any, name: str = "features") -> torch.Tensor:
        h = V.check_features(features, name)
        if self.dim is not None and h.shape[1] != self.dim:
            raise ValueError(
                f"{name} have dimension {h.shape[1]} but earlier batches had {self.dim}; "
                f"every batch must come from the same layer"
            )
        return h

    def update(self, features: Any, labels: Any, logits: Any = None) -> None:
        """Add one batch: features (n, d), labels (n,), optional classifier logits (n, C)."""
        self._check_usable()
        h = self._features(features)
        lg = None if logits is None else V.as_tensor(logits, "logits")
        if self.dim is None:
            self._init(int(h.shape[1]), h.device, h.dtype, lg)
        assert self.device is not None and self.num_classes is not None and self._ct is not None
        if h.device != self.device or h.dtype != self._ct:
            h = h.to(device=self.device, dtype=self._ct)
        y = V.check_labels(labels, h.shape[0], self.device)
        V.check_label_range(y, self.num_classes)
        if lg is not None:
            lg = V.check_logits(lg, h.shape[0], self.num_classes, self.device)
        if self.phase == 2 and self._closed:
            raise RuntimeError(
                "update() after compute() or sync() in pass 2: pass 2 is closed (each sample "
                "is fed once per pass; after a sync the state already holds every rank's data). "
                "Call reset() and run both passes again"
            )
        if self._synced and self.phase == 1 and self._sync_on():
            raise RuntimeError(
                "update() after sync() in the same pass would count other ranks' data twice; "
                "call sync() once, after the last update of a pass"
            )
        self._synced = False
        try:
            if self.phase == 1:
                update_pass1(self._state, h, y, self._decider(h, lg), self._options[
                    "track_spread"], self.full_covariance)
            else:
                update_pass2(self._state2, self._tables, h, y, lg, self._clf, self.tile_size)
        except BaseException:
            self._poisoned = True
            raise

    def _decider(self, h: torch.Tensor, lg: torch.Tensor | None):
        """Pass-1 decisions per chunk (None when pass 1 does not classify)."""
        if not self._options["classify_pass1"]:
            return None
        if lg is not None:
            return lambda rows, hc: lg[rows].argmax(1)
        if self._clf is None:
            return None
        if self._g1 is None:
            seen = torch.nonzero(self._state["seen"]).flatten()
            self._g1 = (self._state["shift"][seen[0]] if seen.numel() else h[0].to(_F64)
                        ).to(self._ct)
        g64 = self._g1.to(_F64)
        beta64 = self._clf.offsets(g64)
        beta, bmax = beta64.to(self._ct), float(beta64.abs().max())
        tol = self._tol(int(self.dim))
        low = low_precision(self._low1, "logits", self._clf.wt, beta, tol)
        return lambda rows, hc: classify(self._clf, hc, self._g1, beta, bmax, tol,
                                         self.tile_size, low=low)

    def update_ood(self, features: Any) -> None:
        """Add out-of-distribution features (n, d) in pass 1 (for ``ood_orthogonality``)."""
        self._check_usable()
        if self.phase != 1:
            raise RuntimeError("update_ood() in pass 2: feed out-of-distribution features in "
                               "pass 1 (before begin_second_pass())")
        h = self._features(features, "ood_features")
        if self.dim is None:
            self._init(int(h.shape[1]), h.device, h.dtype, None)
        if self._synced and self._sync_on():
            raise RuntimeError("update_ood() after sync() would count other ranks' data twice")
        self._synced = False
        try:
            update_ood(self._state, h.to(device=self.device, dtype=self._ct))
        except BaseException:
            self._poisoned = True
            raise

    # ------------------------------------------------------------------ pass 2

    def begin_second_pass(self) -> None:
        """Freeze the (synced) class means; following ``update`` calls are pass 2."""
        self._check_usable()
        if self.phase != 1:
            raise RuntimeError("begin_second_pass() was already called; call reset() to start over")
        if self._state is None or int(self._state["counts"].sum()) == 0:
            raise RuntimeError("begin_second_pass() before any data: run pass 1 (update) first")
        self.sync()
        self._freeze()
        self.phase = 2
        self._synced = False

    def _freeze(self) -> None:
        assert self._ct is not None and self.num_classes is not None and self.dim is not None
        self._tables = build_pass2(self._mean_stats(), self.num_classes, self._ct, self._ncc,
                                   self._tol(self.dim), scatter_ok=not self.per_class)
        self._specs2 = S.enabled(S.PASS2, {"projections": not self._tables.scatter,
                                           "scatter": self._tables.scatter})
        self._state2 = S.new_state(self._specs2, {"C": self.num_classes, "d": self.dim},
                                   self.device)

    def _mean_stats(self) -> MeanStats:
        st = self._state
        if st is None or int(st["counts"].sum()) == 0:
            raise RuntimeError("no data yet: call update(features, labels) first")
        return mean_stats(st["shift"], st["sums"], st["counts"], self._tile)

    # ------------------------------------------------------------------ results

    def compute(self, weight: Any = None, bias: Any = None) -> NCMetrics:
        """The metrics from the data seen so far (see the class docstring for what needs pass 2).

        ``weight``/``bias`` (optional) replace the constructor's classifier for NC2/NC3, duality
        and bias collapse. Under torch.distributed this syncs first: call it on every rank.
        """
        self._check_usable()
        if self.dim is None:
            raise RuntimeError("compute() before any data: call update(features, labels) first")
        self.sync()
        if self.phase == 2:
            self._closed = True
            self._tables.release()  # no more pass-2 updates: their working copies can go
        st = self._tables.stats if self.phase == 2 else self._mean_stats()
        V.warn_absent_classes(self._state["counts"])
        V.warn_low_dimension(self.dim, st.cp)
        clf = self._clf
        if weight is not None:
            w = V.check_matrix(weight, "weight", (self.num_classes, self.dim),
                               "weight must be (C, d), one row per class", self.device)
            b = None if bias is None else V.check_matrix(
                bias, "bias", (self.num_classes,), "bias must be (C,), one entry per class",
                self.device)
            clf = Classifier.make(w, b, self._ct)
        elif bias is not None:
            raise ValueError("bias given without weight; pass the classifier weight too")
        out = NCMetrics(num_classes=st.cp, num_samples=st.total, dim=int(self.dim))
        if not bool(st.mt.any()):
            V.warn_coinciding_means()
        self._means_metrics(out, st, clf)
        if clf is not None:
            self._weight_metrics(out, st, clf)
        self._ood_metric(out, st)
        return out

    def class_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The float64 class means (C, d) of the data seen so far (NaN rows for classes without
        samples) and the global mean (d,), in any pass; synced like ``compute()``."""
        self._check_usable()
        if self.dim is None:
            raise RuntimeError("class_means() before any data: call update(features, labels) "
                               "first")
        if self.phase == 1:
            self.sync()
        st = self._state
        n = st["counts"].to(_F64)
        means = st["shift"] + st["sums"] / n[:, None]
        g = (st["sums"].sum(0) + n @ st["shift"]) / n.sum()
        means[n == 0] = float("nan")
        return means, g

    def _means_metrics(self, out: NCMetrics, st: MeanStats, clf: Classifier | None) -> None:
        pm = st.pairs
        out.equinorm_means, out.equiangular_means = pm.equinorm, pm.equiangular
        out.maxangle_means, out.etf_error_means = pm.maxangle, pm.etf_error
        out.hyperspherical_energy_means = pm.energy
        out.hyperspherical_energy_var_means = pm.energy_var
        ss = nc1_terms = None
        s1 = self._state
        if self.phase == 2:
            s2, tab = self._state2, self._tables
            if not torch.equal(s2["counts"], s1["counts"]):
                raise ValueError(
                    f"pass 2 saw {int(s2['counts'].sum())} samples with per-class counts "
                    f"different from pass 1 ({st.total} samples); both passes must see the same "
                    f"data"
                )
            cnt = s1["counts"].to(_F64)
            ss = (s2["ss"] - cnt * tab.ss_corr)[st.sel]
            if tab.scatter:  # sum_j v_j^T (sum x x^T) v_j / s_j^2, then the e_y correction
                sx = torch.triu(s2["scatter"])
                sx = sx + torch.triu(sx, 1).T
                v = tab.v64
                quad = ((sx @ v) * v).sum(0)
                out.nc1 = float(((quad / tab.s**2).sum() - (cnt * tab.nc1_corr).sum())
                                / st.total)
            else:
                nc1_terms = (s2["nc1"] - cnt * tab.nc1_corr)[st.sel]
                out.nc1 = float(nc1_terms.sum() / st.total)
            out.ncc_error = float(s2["ncc_wrong"].to(_F64) / st.total)
            if int(s2["compared"]) == st.total:
                out.ncc_mismatch = float(s2["mismatch"].to(_F64) / st.total)
            if int(s2["decided"]) == st.total:
                out.accuracy = float(s2["correct"].to(_F64) / st.total)
        elif "ss" in s1:
            ss = s1["ss"][st.sel]
        if out.accuracy is None and "decided" in s1 and int(s1["decided"]) == st.total:
            out.accuracy = float(s1["correct"].to(_F64) / st.total)
        if self.phase == 1 and "scatter" in s1:
            v, s, _ = spectrum(st.mt, torch.finfo(self._ct).eps)
            quad = ((s1["scatter"] @ v) * v).sum(0)
            out.nc1 = float((quad / s**2).sum() / st.total)
        if ss is not None:
            out.nc1_trace_ratio = float((ss.sum() / st.total) / ((st.mt * st.mt).sum() / st.cp))
            out.cdnv = cdnv(ss / st.n, pm.inv_dist)
        if self.per_class:
            out.per_class = per_class_stats(
                classes=st.present, counts=s1["counts"][st.sel], means=st.means(),
                global_mean=st.mu_g, within_ss=ss, nc1_terms=nc1_terms, num_samples=st.total,
                weight=None if clf is None else clf.weight[st.sel])

    def _weight_metrics(self, out: NCMetrics, st: MeanStats, clf: Classifier) -> None:
        wp, mt = clf.weight[st.sel], st.mt
        pw = clf.pair_stats(st.sel, self._tile)
        out.equinorm_weights, out.equiangular_weights = pw.equinorm, pw.equiangular
        out.maxangle_weights, out.etf_error_weights = pw.maxangle, pw.etf_error
        out.hyperspherical_energy_weights = pw.energy
        out.hyperspherical_energy_var_weights = pw.energy_var
        nw, nm = torch.linalg.matrix_norm(wp), torch.linalg.matrix_norm(mt)
        if float(nw) == 0.0:
            V.warn_zero_weights()
        out.self_duality = float(sum(  # in row blocks: no C x d temporaries
            (wp[i:i + 4096] / nw - mt[i:i + 4096] / nm).square_().sum()
            for i in range(0, st.cp, 4096)))
        out.self_duality_etf_error = cross_etf_error(wp, mt, self._tile)
        out.bias_collapse = float(torch.linalg.vector_norm(clf.offsets(st.mu_g)))
        cos = torch.linalg.vecdot(wp, mt) / (torch.linalg.vector_norm(wp, dim=1)
                                              * torch.linalg.vector_norm(mt, dim=1))
        out.uniform_duality = float(cos.std() / cos.mean())

    def _ood_metric(self, out: NCMetrics, st: MeanStats) -> None:
        s1 = self._state
        n = int(s1["ood_counts"][0])
        if n == 0:
            return
        dv = s1["ood_shift"][0] + s1["ood_sums"][0] / n - st.mu_g
        cos = (st.mt @ dv) / (torch.linalg.vector_norm(st.mt, dim=1)
                              * torch.linalg.vector_norm(dv))
        out.ood_orthogonality = float(cos.abs().mean())

    # ------------------------------------------------------------------ combining

    def merge(self, other: NCAccumulator) -> None:
        """Add ``other``'s data to this accumulator, exactly (both in the same pass)."""
        if not isinstance(other, NCAccumulator):
            raise TypeError(f"merge() takes an NCAccumulator, got {type(other).__name__}")
        self._check_usable()
        other._check_usable()
        S.check_same_classifier(self._prints, other._prints, "cannot merge an accumulator made")
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
        if other._options != self._options:
            raise ValueError("cannot merge accumulators built with different options "
                             "(full_covariance, second_pass)")
        if self.phase == 1:
            src = {k: v.to(self.device) for k, v in other._state.items()}
            S.merge_state(self._state, src, self._specs1)
        else:
            if not (torch.equal(self._tables.stats.mt, other._tables.stats.mt.to(self.device))
                    and torch.equal(self._tables.stats.mu_g,
                                    other._tables.stats.mu_g.to(self.device))):
                raise ValueError("cannot merge pass-2 accumulators whose frozen means differ; "
                                 "merge (or sync) the pass-1 states before begin_second_pass()")
            src = {k: v.to(self.device) for k, v in other._state2.items()}
            S.merge_state(self._state2, src, self._specs2)
        self._synced = False

    def sync(self) -> None:
        """All-reduce the state over torch.distributed (a collective; no-op when not initialized
        or ``distributed=False``). Exact: see ``ncollapse.metrics.state.sync_state``."""
        if self.phase == 2:
            self._closed = True
        if self._synced or not self._sync_on():
            self._synced = True
            return
        self._check_usable()
        if self.dim is None:
            raise RuntimeError("sync(): this rank has seen no data; every rank needs at least "
                               "one update() before sync()")
        if self.phase == 1:
            S.sync_state(self._state, self._specs1)
        else:
            S.sync_state(self._state2, self._specs2)
        self._synced = True

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain dict of tensors and numbers; restores with ``load_state_dict``."""
        sd: dict[str, Any] = {
            "version": _STATE_VERSION, "phase": self.phase, "num_classes": self.num_classes,
            "dim": self.dim, "dtype": None if self.dtype is None else str(self.dtype),
            "options": dict(self._options), "classifier": dict(self._prints)}
        if self._state is not None:
            sd["state"] = {k: v.detach().clone() for k, v in self._state.items()}
        if self._state2 is not None:
            sd["pass2"] = {k: v.detach().clone() for k, v in self._state2.items()}
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a state from ``state_dict``; the accumulator must be constructed with the
        same classifier (weight, bias, ncc_means) and options."""
        if sd.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported NCAccumulator state version {sd.get('version')!r} "
                             f"(this ncollapse reads version {_STATE_VERSION}); recompute it")
        if sd["options"] != self._options:
            raise ValueError(f"state was saved with options {sd['options']}, this accumulator "
                             f"has {self._options}; construct it the same way "
                             f"(full_covariance, second_pass)")
        S.check_same_classifier(self._prints, sd["classifier"], "state was saved")
        self.reset()
        if sd["dim"] is None:
            return
        dtype = getattr(torch, str(sd["dtype"]).replace("torch.", ""))
        dev = sd["state"]["counts"].device
        c, d = int(sd["num_classes"]), int(sd["dim"])
        self._init(d, dev, dtype, None, num_classes=c)
        self._state = S.check_state(sd["state"], self._specs1, {"C": c, "d": d}, dev)
        if int(sd["phase"]) == 2:
            self._freeze()
            self.phase = 2
            self._state2 = S.check_state(sd["pass2"], self._specs2, {"C": c, "d": d}, dev)

