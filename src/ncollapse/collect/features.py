"""``collect_features``: a model's features, labels and logits over a loader, in memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ncollapse.collect.batches import Pool
from ncollapse.collect.modules import LayerSpec
from ncollapse.collect.tap import open_tap
from ncollapse.metrics import NCMetrics, measure

__all__ = ["CollectedFeatures", "collect_features"]


@dataclass
class CollectedFeatures:
    """Everything one pass over a loader produced for one layer, on the CPU.

    features (N, d) in the model's dtype, pooled per sample; labels (N,) int64; logits (N, C):
    the classifier module's output, and weight (C, d), bias (C,) or None: its parameters
    (detached copies) -- all three None for a layer whose features are not the classifier's
    input (the classifier does not act on them).
    """

    features: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None

    def measure(self, **kwargs: Any) -> NCMetrics:
        """``ncollapse.measure`` on these features, with the classifier's W, b and logits."""
        return measure(self.features, self.labels, weight=self.weight, bias=self.bias,
                       logits=self.logits, **kwargs)


def collect_features(model: nn.Module, loader: Iterable[Any], *,
                     layer: LayerSpec | None = None,
                     layers: Sequence[LayerSpec] | LayerSpec | None = None,
                     classifier: nn.Module | str | bool | None = None, use: str | None = None,
                     pool: Pool = "flatten", device: torch.device | str | None = None,
                     max_batches: int | None = None, progress: bool = False,
                     input_key: str | None = None, label_key: str | None = None
                     ) -> CollectedFeatures | dict[str, CollectedFeatures]:
    """Run ``model`` over ``loader`` and return the features, labels and logits in memory.

    ``layer``: one module or dotted name, whose input (``use="input"``, the default) or output
    (``use="output"``) are the features; by default the classifier's input. ``layers``: several
    names, glob patterns (``"layer*"``) or modules, their outputs by default; the result is then
    a dict name -> :class:`CollectedFeatures` in the order the forward pass runs them.
    ``classifier``: the module or name with ``weight`` (C, d) and optional ``bias``; by default
    the ``nn.Linear`` whose output is the model's output (found on the first batch; an error
    names the candidates when none or several fit); ``False``: no classifier. ``pool``:
    ``"flatten"``, ``"avg"`` or ``"max"`` over the dims after the channel dim, or a callable
    (n, ...) -> (n, d). Batches are ``(inputs, labels, ...)`` tuples/lists or dicts (keys such
    as "input"/"label", or ``input_key``/``label_key``); inputs that are tuples or dicts are
    passed as ``model(*x)``/``model(**x)``. Runs in eval mode under ``torch.no_grad``; every
    module's mode and hooks are restored afterwards. Inputs go to ``device`` (default: where
    the parameters are; the model is not moved). Results are on the CPU.
    """
    tap, several = open_tap(model, layer, layers, classifier=classifier, use=use, pool=pool,
                            device=device, max_batches=max_batches, progress=progress,
                            input_key=input_key, label_key=label_key)
    feats: dict[str, list[torch.Tensor]] = {}
    labels, logits = [], []
    batches = tap.batches(loader, "collect features")
    with contextlib.closing(batches):  # hooks and modes restored even if we stop early
        for f, y, z in batches:
            for name, value in f.items():
                feats.setdefault(name, []).append(value.cpu())
            labels.append(y)
            if z is not None:
                logits.append(z.cpu())
    if not labels:
        raise ValueError("the loader produced no batches")
    y_all = torch.cat(labels)
    z_all = torch.cat(logits) if logits else None
    clf = tap.classifier
    out = {}
    for name in tap.names:
        own = tap.with_classifier[name] and clf is not None
        bias = getattr(clf, "bias", None) if own else None
        out[name] = CollectedFeatures(
            features=torch.cat(feats[name]), labels=y_all, logits=z_all if own else None,
            weight=clf.weight.detach().cpu().clone() if own else None,
            bias=None if bias is None else bias.detach().cpu().clone())
    return out if several else out[tap.names[0]]
