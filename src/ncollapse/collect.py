"""Feature collection from any ``torch.nn.Module`` with forward hooks, and ``measure_model``.

The user names the layer whose input (``use="input"``) or output (``use="output"``) are the
features, and the classifier module whose ``weight`` (C, d) and ``bias`` (C,) are W and b.
Both default to the last ``nn.Linear`` registered in the model, so for the usual
``features -> Linear`` network the features are the classifier's input. Collection runs under
``torch.no_grad`` in eval mode; afterwards every submodule's train/eval flag is restored and
every hook removed, also when an exception is raised.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ncollapse.keys import INPUT_KEYS, LABEL_KEYS, pick_key
from ncollapse.metrics import NCAccumulator, NCMetrics, measure

__all__ = ["CollectedFeatures", "collect_features", "measure_model", "resolve_modules"]

DEFAULT_CACHE_BYTES = 2 * 1024**3


@dataclass
class CollectedFeatures:
    """Everything one pass over a loader produced, on the CPU.

    features (N, d) in the model's dtype, flattened per sample; labels (N,) int64;
    logits (N, C): the classifier module's output; weight (C, d) and bias (C,) or None:
    the classifier's parameters (detached copies).
    """

    features: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None

    def measure(self, **kwargs: Any) -> NCMetrics:
        """``ncollapse.measure`` on these features, with the classifier's W, b and logits."""
        return measure(self.features, self.labels, weight=self.weight, bias=self.bias,
                       logits=self.logits, **kwargs)


# --------------------------------------------------------------------------- modules


def _find_module(model: nn.Module, spec: nn.Module | str, what: str) -> nn.Module:
    named = dict(model.named_modules())
    if isinstance(spec, nn.Module):
        if not any(m is spec for m in named.values()):
            raise ValueError(f"the {what} module given is not a submodule of the model")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{what} must be an nn.Module or a dotted module name, "
                        f"got {type(spec).__name__}")
    if spec in named:
        return named[spec]
    names = [n for n in named if n]
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.4)
    hint = f"close names: {', '.join(close)}" if close else (
        f"available: {', '.join(names[:30])}" + (" ..." if len(names) > 30 else ""))
    raise ValueError(f"{what} {spec!r} is not a module name of the model; {hint}")


def _last_linear(model: nn.Module) -> nn.Linear:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(
            "the model has no nn.Linear; name the classifier module (classifier=...) whose "
            "weight (C, d) and bias (C,) are the last-layer classifier"
        )
    return last


def resolve_modules(model: nn.Module, layer: nn.Module | str | None = None,
                    classifier: nn.Module | str | None = None) -> tuple[nn.Module, nn.Module]:
    """The (feature layer, classifier) modules: names resolved, defaults = last nn.Linear."""
    clf = _last_linear(model) if classifier is None else _find_module(model, classifier,
                                                                      "classifier")
    weight = getattr(clf, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(
            f"classifier {type(clf).__name__} needs a 2-D weight (C, d); got "
            f"{None if weight is None else tuple(weight.shape)}"
        )
    bias = getattr(clf, "bias", None)
    if bias is not None and (not isinstance(bias, torch.Tensor)
                             or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f"classifier bias must have shape ({weight.shape[0]},), got "
                         f"{getattr(bias, 'shape', type(bias).__name__)}")
    feat = clf if layer is None else _find_module(model, layer, "layer")
    return feat, clf


# --------------------------------------------------------------------------- batches


def _split_batch(batch: Any, input_key: str | None, label_key: str | None) -> tuple[Any, Any]:
    if isinstance(batch, Mapping):
        return (pick_key(batch, input_key, INPUT_KEYS, "inputs", "input_key=..."),
                pick_key(batch, label_key, LABEL_KEYS, "labels", "label_key=..."))
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        "each batch must be an (inputs, labels) tuple/list or a dict with input and label keys, "
        f"got {type(batch).__name__}"
    )


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def _labels_tensor(y: Any, n: int) -> torch.Tensor:
    y = torch.as_tensor(y).detach().cpu()
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"batch labels must have shape ({n},) matching the features, "
                         f"got {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    return y.long()


# --------------------------------------------------------------------------- the pass


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training


def _iterate(model: nn.Module, loader: Iterable[Any], feat_module: nn.Module,
             clf: nn.Module, use: str, device: torch.device, max_batches: int | None,
             progress: bool, input_key: str | None, label_key: str | None, desc: str
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (features (B, d), labels (B,) on the CPU, logits (B, C)) batch by batch.

    Features and logits stay on the model's device. A module called several times per
    forward pass (a shared activation, say) contributes its last call.
    """
    if use not in ("input", "output"):
        raise ValueError(f"use must be 'input' or 'output', got {use!r}")
    store: dict[str, torch.Tensor] = {}

    def grab(name: str, value: Any) -> None:
        if isinstance(value, (tuple, list)):
            value = value[0] if value else None
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"the hooked {name} is a {type(value).__name__}, not a tensor")
        store[name] = value.detach()

    def feat_hook(_m: nn.Module, args: Any, out: Any) -> None:
        grab("features", args if use == "input" else out)

    def clf_hook(_m: nn.Module, _args: Any, out: Any) -> None:
        grab("logits", out)

    total = None
    with contextlib.suppress(TypeError):
        total = len(loader)  # type: ignore[arg-type]
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    batches: Iterable[Any] = loader
    if progress:
        batches = tqdm(loader, total=total, desc=desc, unit="batch", leave=False)

    handles = [feat_module.register_forward_hook(feat_hook),
               clf.register_forward_hook(clf_hook)]
    try:
        with _eval_mode(model), torch.no_grad():
            for k, batch in enumerate(batches):
                if max_batches is not None and k >= max_batches:
                    break
                x, y = _split_batch(batch, input_key, label_key)
                store.clear()
                _call(model, _to_device(x, device))
                if "features" not in store or "logits" not in store:
                    missing = "feature layer" if "features" not in store else "classifier"
                    raise ValueError(f"the {missing} module was not called in the forward pass; "
                                     "check the layer/classifier arguments")
                feats = store["features"]
                feats = feats[:, None] if feats.ndim == 1 else feats.flatten(1)
                logits = store["logits"].flatten(1)
                if k == 0:
                    _check_weight(clf.weight, feats.shape[1], _module_name(model, feat_module))
                labels = _labels_tensor(y, feats.shape[0])
                if logits.shape[0] != feats.shape[0]:
                    raise ValueError(f"classifier output has {logits.shape[0]} rows but the "
                                     f"features have {feats.shape[0]}")
                yield feats, labels, logits
    finally:
        for h in handles:
            h.remove()
        if progress and hasattr(batches, "close"):
            batches.close()  # type: ignore[union-attr]


def _check_weight(weight: torch.Tensor, dim: int, layer_name: str) -> None:
    if weight.shape[1] != dim:
        raise ValueError(
            f"classifier weight has shape {tuple(weight.shape)} but the features from "
            f"{layer_name} have dimension {dim}; name the layer whose input (use='input') or "
            "output (use='output') feeds the classifier"
        )


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return repr(name) if name else "the model itself"
    return type(module).__name__


def collect_features(model: nn.Module, loader: Iterable[Any], *,
                     layer: nn.Module | str | None = None,
                     classifier: nn.Module | str | None = None, use: str = "input",
                     device: torch.device | str | None = None, max_batches: int | None = None,
                     progress: bool = False, input_key: str | None = None,
                     label_key: str | None = None) -> CollectedFeatures:
    """Run ``model`` over ``loader`` and return the features, labels and logits in memory.

    ``layer``: module or dotted name whose input (``use="input"``) or output
    (``use="output"``) are the features, flattened per sample; ``classifier``: module or name
    with ``weight`` (C, d) and optional ``bias``, by default the last ``nn.Linear``; ``layer``
    defaults to the classifier, so the features are what the classifier sees.
    Batches are ``(inputs, labels, ...)`` tuples/lists or dicts (keys such as "input"/"label",
    or ``input_key``/``label_key``); inputs that are tuples or dicts are passed as
    ``model(*x)``/``model(**x)``. Inputs are moved to ``device`` (default: where the model's
    parameters are; the model itself is not moved). Results are on the CPU.
    """
    feat_module, clf = resolve_modules(model, layer, classifier)
    dev = _model_device(model) if device is None else torch.device(device)
    feats, labels, logits = [], [], []
    batches = _iterate(model, loader, feat_module, clf, use, dev, max_batches, progress,
                       input_key, label_key, "collect features")
    with contextlib.closing(batches):  # hooks and modes restored even if we stop early
        for f, y, z in batches:
            feats.append(f.cpu())
            labels.append(y)
            logits.append(z.cpu())
    if not feats:
        raise ValueError("the loader produced no batches")
    bias = getattr(clf, "bias", None)
    return CollectedFeatures(
        features=torch.cat(feats), labels=torch.cat(labels), logits=torch.cat(logits),
        weight=clf.weight.detach().cpu().clone(),
        bias=None if bias is None else bias.detach().cpu().clone(),
    )


def measure_model(model: nn.Module, loader: Iterable[Any], *,
                  layer: nn.Module | str | None = None,
                  classifier: nn.Module | str | None = None, use: str = "input",
                  device: torch.device | str | None = None, num_classes: int | None = None,
                  two_pass: bool | str = "auto", cache: bool | str | int = "auto",
                  full_covariance: bool = False, max_batches: int | None = None,
                  progress: bool = False, input_key: str | None = None,
                  label_key: str | None = None) -> NCMetrics:
    """Neural-collapse metrics of ``model`` on ``loader``, streamed through ``NCAccumulator``.

    Arguments as in :func:`collect_features`. NC4 (``ncc_mismatch``) compares the model's own
    predictions (the classifier module's output) with the nearest class mean, so it needs a
    second pass once the means are final:
    - ``cache``: keep pass-1 features and logits in CPU memory and replay them (``True``), never
      (``False``), or while they fit in ``DEFAULT_CACHE_BYTES`` / the given number of bytes
      (``"auto"`` / int); without a cache the second pass runs the model again, which needs a
      loader that yields the same samples again (shuffling is fine, random augmentation not).
    - ``two_pass``: ``True`` always does pass 2, ``False`` never (``ncc_mismatch`` is then
      None), ``"auto"`` does it unless the loader is a one-shot iterator that was not cached.
    Under ``torch.distributed`` each rank passes its own shard; the accumulator syncs, so
    every rank gets the metrics of all shards. ``num_classes`` defaults to the classifier's
    number of rows. Without pass 2, ``nc1``
    needs ``full_covariance=True`` (a d x d within-class scatter, see ``NCAccumulator``).
    """
    if two_pass not in (True, False, "auto"):
        raise ValueError(f"two_pass must be True, False or 'auto', got {two_pass!r}")
    if isinstance(cache, bool):
        limit = None if cache else 0
    elif cache == "auto":
        limit = DEFAULT_CACHE_BYTES
    elif isinstance(cache, int) and cache >= 0:
        limit = cache
    else:
        raise ValueError(f"cache must be True, False, 'auto' or a byte count, got {cache!r}")

    feat_module, clf = resolve_modules(model, layer, classifier)
    dev = _model_device(model) if device is None else torch.device(device)
    weight = clf.weight.detach()
    bias = getattr(clf, "bias", None)
    bias = None if bias is None else bias.detach()
    c = int(weight.shape[0]) if num_classes is None else int(num_classes)
    acc = NCAccumulator(num_classes=c, full_covariance=full_covariance)
    args = (model, loader, feat_module, clf, use, dev, max_batches, progress, input_key,
            label_key)

    one_shot = isinstance(loader, Iterator)  # a generator cannot be iterated twice
    cached: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = []
    size = 0
    seen = 0
    batches = _iterate(*args, "NC pass 1")
    with contextlib.closing(batches):
        for f, y, z in batches:
            seen += 1
            acc.update(f, y, z)
            if cached is not None:
                size += f.element_size() * f.numel() + z.element_size() * z.numel() + 8 * y.numel()
                if limit is not None and size > limit:
                    cached = None
                else:  # on the CPU: device memory is precious, the accumulator moves it back
                    cached.append((f.cpu(), y, z.cpu()))
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
                          "cached (on this or another rank); ncc_mismatch (NC4) is not "
                          "measured", stacklevel=2)
        return acc.compute(weight=weight, bias=bias)
    if cached is None and one_shot:
        raise ValueError("two_pass=True needs either a cache (cache=True) or a loader that can "
                         "be iterated twice, not a one-shot iterator")
    acc.begin_second_pass()
    if cached is not None:
        for f, y, z in cached:
            acc.update(f, y, z)
    else:
        batches = _iterate(*args, "NC pass 2")
        with contextlib.closing(batches):
            for f, y, z in batches:
                acc.update(f, y, z)
    return acc.compute(weight=weight, bias=bias)
