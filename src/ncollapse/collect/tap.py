"""``LayerTap``: forward hooks on the chosen layers and the classifier, one batch at a time.

On the first batch a probe forward pass (hooks only, under ``torch.no_grad``) settles what
the names leave open: the classifier when none is named (the one ``nn.Linear`` whose output
is the model's output), the order of the layers (the order the forward pass calls them), and
which layers have the classifier of their own (their features, after pooling, are exactly the
classifier's input on that batch). Every later pass reuses that plan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ncollapse import validation as V
from ncollapse.collect.batches import (
    Pool,
    call_model,
    check_pool,
    eval_mode,
    model_device,
    pool_features,
    split_batch,
    to_device,
)
from ncollapse.collect.modules import (
    LayerSpec,
    check_classifier,
    find_module,
    module_name,
    pick_classifier,
    select_layers,
)

__all__ = ["CLASSIFIER_INPUT", "LayerTap", "open_tap"]

#: Stands for "the classifier's input" in a list of layers (the default single layer).
CLASSIFIER_INPUT = object()

Batch = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]


def _grab(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"the hooked {what} is a {type(value).__name__}, not a tensor")
    return value.detach()


class LayerTap:
    """Hooks that read the features of ``layers`` and the classifier's output per batch.

    ``layers``: names, glob patterns or modules, or ``[CLASSIFIER_INPUT]``; ``classifier``: a
    module or name, None (find it) or False (none); ``use``: each layer's "input" or "output".
    After the first batch: ``names`` (in forward order), ``classifier``, ``classifier_name``
    and ``with_classifier`` (name -> whether the layer's features are the classifier's input).
    """

    def __init__(self, model: nn.Module, layers: list[LayerSpec | object], *,
                 classifier: nn.Module | str | bool | None, use: str, pool: Pool,
                 device: torch.device, max_batches: int | None = None, progress: bool = False,
                 input_key: str | None = None, label_key: str | None = None) -> None:
        if use not in ("input", "output"):
            raise ValueError(f"use must be 'input' or 'output', got {use!r}")
        check_pool(pool)
        if classifier is True:
            raise ValueError("classifier=True is not a module; pass a module, a name, None "
                             "(find it) or False (none)")
        self.model, self.use, self.pool, self.device = model, use, pool, device
        self.max_batches, self.progress = max_batches, progress
        self.keys = (input_key, label_key)
        self.classifier: nn.Module | None = None
        self.classifier_name: str | None = None
        if classifier is not None and classifier is not False:
            self.classifier = find_module(model, classifier, "classifier")
            check_classifier(self.classifier)
            self.classifier_name = module_name(model, self.classifier)
        self._find_classifier = classifier is None
        self._default_layer = len(layers) == 1 and layers[0] is CLASSIFIER_INPUT
        if self._default_layer:
            if classifier is False:
                raise ValueError("with classifier=False, name the layer(s) to measure")
            self._layers: list[tuple[str, nn.Module]] = []
        else:
            self._layers = select_layers(model, layers)  # type: ignore[arg-type]
        self.names: list[str] = []
        self.with_classifier: dict[str, bool] = {}
        self.planned = False

    # ------------------------------------------------------------------ the plan

    def _probe(self, x: Any) -> None:
        """One forward pass of the first batch with hooks on every candidate module."""
        store: dict[str, Any] = {}
        order: dict[str, int] = {}
        handles = []
        linears = ({n: m for n, m in self.model.named_modules() if isinstance(m, nn.Linear)}
                   if self._find_classifier else {})
        if self._find_classifier and not linears:
            raise ValueError("the model has no nn.Linear; name the classifier module "
                             "(classifier=...) whose weight (C, d) and bias (C,) are the "
                             "last-layer classifier, or pass classifier=False")

        def hook(key: str) -> Any:
            def fn(_m: nn.Module, args: Any, out: Any) -> None:
                order.setdefault(key, len(order))
                store[key] = (args, out)
            return fn

        try:
            for name, m in self._layers:
                handles.append(m.register_forward_hook(hook("layer:" + name)))
            for name, m in linears.items():
                handles.append(m.register_forward_hook(hook("linear:" + name)))
            if self.classifier is not None:
                handles.append(self.classifier.register_forward_hook(hook("clf")))
            output = call_model(self.model, x)
        finally:
            for h in handles:
                h.remove()
        if self._find_classifier:
            outs = {n: _grab(store[f"linear:{n}"][1], "classifier output")
                    for n in linears if f"linear:{n}" in store}
            self.classifier_name = pick_classifier(self.model, outs, output)
            self.classifier = linears[self.classifier_name]
            store["clf"] = store[f"linear:{self.classifier_name}"]
            order["clf"] = order[f"linear:{self.classifier_name}"]
        if self.classifier is not None and "clf" not in store:
            raise ValueError("the classifier module was not called in the forward pass; "
                             "name the module whose weight the model applies (classifier=...)")
        if self._default_layer:
            assert self.classifier is not None and self.classifier_name is not None
            self._layers = [(self.classifier_name, self.classifier)]
            store["layer:" + self.classifier_name] = store["clf"]
            order["layer:" + self.classifier_name] = order["clf"]
        missing = [n for n, _ in self._layers if "layer:" + n not in store]
        if missing:
            raise ValueError(f"layer(s) {', '.join(map(repr, missing))} not called in the "
                             "forward pass; name modules the model runs")
        self._layers.sort(key=lambda item: order["layer:" + item[0]])
        self.names = [n for n, _ in self._layers]
        clf_in = None
        if self.classifier is not None:
            clf_in = pool_features(_grab(store["clf"][0], "classifier input"), "flatten", "")
        for name, _ in self._layers:
            args, out = store["layer:" + name]
            f = pool_features(_grab(args if self.use == "input" else out, "layer"), self.pool,
                              name)
            self.with_classifier[name] = clf_in is not None and f.shape == clf_in.shape \
                and bool(torch.equal(f, clf_in))
        if self._default_layer and not self.with_classifier[self.names[0]]:
            raise ValueError("the pooled classifier input differs from its flattened input; "
                             "use pool='flatten' for the classifier's input")
        if self.classifier is not None and any(self.with_classifier.values()):
            d = int(clf_in.shape[1])
            w = self.classifier.weight
            if w.shape[1] != d:
                raise ValueError(f"classifier weight has shape {tuple(w.shape)} but its input "
                                 f"has dimension {d}")
        self.planned = True

    # ------------------------------------------------------------------ the passes

    def batches(self, loader: Iterable[Any], desc: str) -> Iterator[Batch]:
        """(features per layer name, labels (n,) on the CPU, classifier logits or None) per
        batch; features and logits stay on the model's device. Hooks are removed and modes
        restored when the iterator ends or is closed."""
        total = None
        with contextlib.suppress(TypeError):
            total = len(loader)  # type: ignore[arg-type]
        if self.max_batches is not None:
            total = self.max_batches if total is None else min(total, self.max_batches)
        items: Iterable[Any] = loader
        if self.progress:
            items = tqdm(loader, total=total, desc=desc, unit="batch", leave=False)
        store: dict[str, torch.Tensor] = {}
        handles: list[Any] = []

        def layer_hook(name: str) -> Any:
            def fn(_m: nn.Module, args: Any, out: Any) -> None:
                store[name] = _grab(args if self.use == "input" else out, f"layer {name!r}")
            return fn

        def clf_hook(_m: nn.Module, _args: Any, out: Any) -> None:
            store["\0logits"] = _grab(out, "classifier output")

        try:
            with eval_mode(self.model), torch.no_grad():
                for k, batch in enumerate(items):
                    if self.max_batches is not None and k >= self.max_batches:
                        break
                    x, y = split_batch(batch, *self.keys)
                    x = to_device(x, self.device)
                    if not self.planned:
                        self._probe(x)
                    if not handles:
                        handles = [m.register_forward_hook(layer_hook(n))
                                   for n, m in self._layers]
                        if self.classifier is not None:
                            handles.append(self.classifier.register_forward_hook(clf_hook))
                    store.clear()
                    call_model(self.model, x)
                    feats = {n: pool_features(store[n], self.pool, n) for n in self.names
                             if n in store}
                    if len(feats) != len(self.names):
                        gone = [n for n in self.names if n not in feats]
                        raise ValueError(f"layer(s) {gone} not called in this forward pass")
                    logits = store.get("\0logits")
                    if logits is not None:
                        logits = logits.flatten(1)
                    n = next(iter(feats.values())).shape[0]
                    labels = V.check_labels(y, n, torch.device("cpu"))
                    if logits is not None and logits.shape[0] != n:
                        raise ValueError(f"classifier output has {logits.shape[0]} rows but the "
                                         f"features have {n}")
                    yield feats, labels, logits
        finally:
            for h in handles:
                h.remove()
            if self.progress and hasattr(items, "close"):
                items.close()  # type: ignore[union-attr]


def open_tap(model: nn.Module, layer: LayerSpec | None,
             layers: Sequence[LayerSpec] | LayerSpec | None, *,
             classifier: nn.Module | str | bool | None, use: str | None, pool: Pool,
             device: torch.device | str | None, max_batches: int | None = None,
             progress: bool = False, input_key: str | None = None,
             label_key: str | None = None) -> tuple[LayerTap, bool]:
    """The tap for the public functions' arguments, and whether several layers were asked for
    (``layers=``: a dict comes back). ``use`` defaults to "input" for one layer (the
    classifier's input by default) and "output" for several; ``device`` to the model's."""
    if layer is not None and layers is not None:
        raise ValueError("give either layer= (one layer) or layers= (several), not both")
    several = layers is not None
    if several:
        specs = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    else:
        specs = [CLASSIFIER_INPUT] if layer is None else [layer]
    use = use if use is not None else ("output" if several else "input")
    dev = model_device(model) if device is None else torch.device(device)
    tap = LayerTap(model, specs, classifier=classifier, use=use, pool=pool, device=dev,
                   max_batches=max_batches, progress=progress, input_key=input_key,
                   label_key=label_key)
    return tap, several
