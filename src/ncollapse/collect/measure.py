"""``measure_model``: neural-collapse metrics of one or many layers of a model, streamed.

One ``NCAccumulator`` per layer, fed from the same forward pass: pass 1 over the loader for
the class means (and everything that needs only them), pass 2 (replayed from a CPU cache when
it fits, else a second run of the model) for NC1 and the nearest-class-centre decisions. Two
passes over the loader at most, however many layers.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ncollapse import validation as V
from ncollapse.collect.batches import Pool
from ncollapse.collect.modules import LayerSpec
from ncollapse.collect.tap import LayerTap, open_tap
from ncollapse.metrics import NCAccumulator, NCMetrics, class_means
from ncollapse.validation import user_stacklevel

__all__ = ["DEFAULT_CACHE_BYTES", "measure_model", "training_means"]

DEFAULT_CACHE_BYTES = 2 * 1024**3

Cached = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]


def _cache_limit(cache: bool | str | int) -> int | None:
    if isinstance(cache, bool):
        return None if cache else 0
    if cache == "auto":
        return DEFAULT_CACHE_BYTES
    if isinstance(cache, int) and cache >= 0:
        return cache
    raise ValueError(f"cache must be True, False, 'auto' or a byte count, got {cache!r}")


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.element_size() * t.numel()


class _Layers:
    """The per-layer accumulators, created on the first batch (when the plan is known)."""

    def __init__(self, tap: LayerTap, *, num_classes: int | None, full_covariance: bool,
                 per_class: bool, ncc_means: Any) -> None:
        self.tap, self.num_classes = tap, num_classes
        self.full_covariance, self.per_class, self.ncc_means = (full_covariance, per_class,
                                                                ncc_means)
        self.acc: dict[str, NCAccumulator] = {}

    def _means_for(self, name: str) -> Any:
        if self.ncc_means is None:
            return None
        if not isinstance(self.ncc_means, Mapping):
            return self.ncc_means if len(self.tap.names) == 1 else self._need_dict()
        if name not in self.ncc_means:
            raise ValueError(f"ncc_means has no entry for layer {name!r}; keys: "
                             f"{sorted(self.ncc_means)} (training_means(...) gives one per layer)")
        return self.ncc_means[name]

    def _need_dict(self) -> None:
        raise ValueError("with several layers, ncc_means must be a dict layer name -> (C, d) "
                         "means, as training_means(model, loader, layers=...) returns")

    def _classes(self) -> int:
        if self.num_classes is not None:
            return int(self.num_classes)
        clf = self.tap.classifier
        if clf is not None:
            return int(clf.weight.shape[0])
        if self.ncc_means is not None:
            first = next(iter(self.ncc_means.values())) if isinstance(
                self.ncc_means, Mapping) else self.ncc_means
            return int(torch.as_tensor(first).shape[0])
        raise ValueError("without a classifier, pass num_classes=C (the number of classes)")

    def update(self, feats: dict[str, torch.Tensor], y: torch.Tensor,
               logits: torch.Tensor | None) -> None:
        if not self.acc:
            c = self._classes()
            for name in self.tap.names:
                self.acc[name] = NCAccumulator(num_classes=c, ncc_means=self._means_for(name),
                                               full_covariance=self.full_covariance,
                                               per_class=self.per_class)
        for name, f in feats.items():
            own = self.tap.with_classifier[name] and logits is not None
            self.acc[name].update(f, y, logits if own else None)

    def begin_second_pass(self) -> None:
        for acc in self.acc.values():
            acc.begin_second_pass()

    def compute(self) -> dict[str, NCMetrics]:
        out = {}
        clf = self.tap.classifier
        for name, acc in self.acc.items():
            if self.tap.with_classifier[name] and clf is not None:
                w = clf.weight.detach()
                b = getattr(clf, "bias", None)
                out[name] = acc.compute(weight=w, bias=None if b is None else b.detach())
            else:  # metrics that need no classifier; NC4 as ncc_error (against the labels)
                out[name] = acc.compute()
        return out


def measure_model(model: nn.Module, loader: Iterable[Any], *,
                  layer: LayerSpec | None = None,
                  layers: Sequence[LayerSpec] | LayerSpec | None = None,
                  classifier: nn.Module | str | bool | None = None, use: str | None = None,
                  pool: Pool = "flatten", device: torch.device | str | None = None,
                  num_classes: int | None = None, two_pass: bool | str = "auto",
                  cache: bool | str | int = "auto", full_covariance: bool = False,
                  per_class: bool = False, ncc_means: Any = None,
                  max_batches: int | None = None, progress: bool = False,
                  input_key: str | None = None, label_key: str | None = None
                  ) -> NCMetrics | dict[str, NCMetrics]:
    """Neural-collapse metrics of ``model`` on ``loader``: one layer, or many in one go.

    Layers, classifier, ``use``, ``pool`` and batches as in :func:`collect_features`; with
    ``layers=`` the result is a dict layer name -> NCMetrics in the order the forward pass
    runs the layers, else one NCMetrics. A layer whose features are the classifier's input
    gets every metric; any other layer gets those that need no classifier, and NC4 as
    ``ncc_error``: the fraction of samples whose nearest class centre is not their label.
    ``ncc_means``: centres for the NC4 decisions instead of the data's own class means
    (e.g. ``training_means(model, train_loader, ...)`` on a test loader), a (C, d) tensor or,
    with several layers, a dict name -> (C, d). ``per_class=True`` attaches
    ``NCMetrics.per_class`` (see ``ncollapse.metrics.per_class``).

    Passes: NC1 and NC4 need the final class means, so a second pass follows pass 1:
    - ``cache``: keep pass-1 features (all layers) and logits in CPU memory and replay them
      (``True``), never (``False``), or while they fit in ``DEFAULT_CACHE_BYTES`` / the given
      number of bytes (``"auto"`` / int); without a cache the second pass runs the model
      again, which needs a loader that yields the same samples again.
    - ``two_pass``: ``True`` always, ``False`` never (``nc1`` then needs
      ``full_covariance=True``, a d x d scatter, and NC4 is None), ``"auto"`` unless the
      loader is a one-shot iterator that was not cached.
    Under ``torch.distributed`` each rank passes its own shard and gets the metrics of all.
    ``num_classes`` defaults to the classifier's number of rows.
    """
    if two_pass not in (True, False, "auto"):
        raise ValueError(f"two_pass must be True, False or 'auto', got {two_pass!r}")
    limit = _cache_limit(cache)
    tap, several = open_tap(model, layer, layers, classifier=classifier, use=use, pool=pool,
                            device=device, max_batches=max_batches, progress=progress,
                            input_key=input_key, label_key=label_key)
    dev = tap.device
    accs = _Layers(tap, num_classes=num_classes, full_covariance=full_covariance,
                   per_class=per_class, ncc_means=ncc_means)

    one_shot = isinstance(loader, Iterator)  # a generator cannot be iterated twice
    cached: list[Cached] | None = []
    size = seen = 0
    batches = tap.batches(loader, "NC pass 1")
    with contextlib.closing(batches):
        for feats, y, z in batches:
            seen += 1
            accs.update(feats, y, z)
            if cached is not None:
                size += sum(_nbytes(f) for f in feats.values()) + _nbytes(z) + 8 * y.numel()
                if limit is not None and size > limit:
                    cached = None
                else:  # on the CPU: device memory is precious, the accumulator moves it back
                    cached.append(({n: f.cpu() for n, f in feats.items()}, y,
                                   None if z is None else z.cpu()))
    if seen == 0:
        raise ValueError("the loader produced no batches")

    skip = two_pass is False or (two_pass == "auto" and cached is None and one_shot)
    if two_pass == "auto" and dist.is_available() and dist.is_initialized():
        flag = torch.tensor([int(skip)], device=dev if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank must take the same path
        skip = bool(flag.item())
    if skip:
        if two_pass == "auto":
            warnings.warn("the loader is a one-shot iterator and its features were not "
                          "cached (on this or another rank); NC4 is not measured",
                          stacklevel=user_stacklevel())
    elif cached is None and one_shot:
        raise ValueError("two_pass=True needs either a cache (cache=True) or a loader that can "
                         "be iterated twice, not a one-shot iterator")
    else:
        accs.begin_second_pass()
        if cached is not None:
            for feats, y, z in cached:
                accs.update(feats, y, z)
        else:
            batches = tap.batches(loader, "NC pass 2")
            with contextlib.closing(batches):
                for feats, y, z in batches:
                    accs.update(feats, y, z)
    out = accs.compute()
    return out if several else out[tap.names[0]]


def training_means(model: nn.Module, loader: Iterable[Any], *,
                   layer: LayerSpec | None = None,
                   layers: Sequence[LayerSpec] | LayerSpec | None = None,
                   classifier: nn.Module | str | bool | None = None, use: str | None = None,
                   pool: Pool = "flatten", device: torch.device | str | None = None,
                   num_classes: int | None = None, max_batches: int | None = None,
                   progress: bool = False, input_key: str | None = None,
                   label_key: str | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
    """Class means (C, d), float64 on the CPU, of the features ``measure_model`` would measure
    (same arguments), from one pass; a dict name -> means with ``layers=``. Pass them as
    ``measure_model(model, test_loader, ..., ncc_means=...)`` to measure NC4 on test data
    against the training means. Every class must have samples in ``loader``; under
    torch.distributed each rank passes its shard and every rank gets the means of all.
    """
    tap, several = open_tap(model, layer, layers, classifier=classifier, use=use, pool=pool,
                            device=device, max_batches=max_batches, progress=progress,
                            input_key=input_key, label_key=label_key)
    dev = tap.device
    sums: dict[str, torch.Tensor] = {}
    counts: torch.Tensor | None = None
    c = num_classes
    batches = tap.batches(loader, "class means")
    with contextlib.closing(batches):
        for feats, y, _ in batches:
            if c is None:
                if tap.classifier is None:
                    raise ValueError("without a classifier, pass num_classes=C")
                c = int(tap.classifier.weight.shape[0])
            V.check_label_range(y, c)
            n_b = torch.bincount(y, minlength=c).to(torch.float64)
            counts = n_b if counts is None else counts + n_b
            for name, f in feats.items():
                m_b = torch.nan_to_num(class_means(f, y.to(f.device), c)[0].cpu())
                part = m_b * n_b[:, None]  # this batch's class sums, from centred means
                sums[name] = part if name not in sums else sums[name] + part
    if counts is None:
        raise ValueError("the loader produced no batches")
    if dist.is_available() and dist.is_initialized():  # every rank's shard
        backend_dev = dev if dist.get_backend() == "nccl" else torch.device("cpu")
        for t in [counts, *sums.values()]:
            moved = t.to(backend_dev)
            dist.all_reduce(moved)
            t.copy_(moved.cpu())
    absent = torch.nonzero(counts == 0).flatten().tolist()
    if absent:
        raise ValueError(f"classes {absent} have no samples in the loader, so they have no "
                         "training mean")
    means = {name: s / counts[:, None] for name, s in sums.items()}
    return means if several else means[tap.names[0]]
