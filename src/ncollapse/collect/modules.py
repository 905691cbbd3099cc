"""Finding modules in a model: layers by name, glob pattern or object, and the classifier."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["LayerSpec", "check_classifier", "find_module", "module_name", "output_tensors",
           "pick_classifier", "select_layers"]

#: A layer as the user names it: a dotted module name, a glob pattern ("layer*") or the module.
LayerSpec = str | nn.Module
_GLOB = set("*?[")


def module_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model`` ("" for the model itself)."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"the {type(module).__name__} given is not a submodule of the model")


def _hint(model: nn.Module, spec: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(spec, names, n=5, cutoff=0.4)
    return f"close names: {', '.join(close)}" if close else (
        f"available: {', '.join(names[:30])}" + (" ..." if len(names) > 30 else ""))


def find_module(model: nn.Module, spec: LayerSpec, what: str) -> nn.Module:
    """The submodule ``spec`` names (a dotted name or the module itself)."""
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
    raise ValueError(f"{what} {spec!r} is not a module name of the model; {_hint(model, spec)}")


def select_layers(model: nn.Module, layers: Sequence[LayerSpec] | LayerSpec
                  ) -> list[tuple[str, nn.Module]]:
    """(name, module) for every layer named, matched by a glob pattern or given as a module,
    each once, in registration order (callers reorder by the order of the forward pass).
    In patterns ``*`` stays within one dotted part of a name ("layer*" picks ``layer1``, not
    ``layer1.0``); ``**`` crosses dots ("layer1.**" is everything inside layer1)."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if not isinstance(layers, Sequence) or not layers:
        raise ValueError("layers must be a non-empty list of module names, glob patterns "
                         "(e.g. 'layer*') or modules")
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen: set[str] = set()
    for spec in layers:
        if isinstance(spec, nn.Module):
            name = module_name(model, spec)
            if not name:
                raise ValueError("the model itself is not a layer; name its submodules")
            chosen.add(name)
        elif isinstance(spec, str) and _GLOB & set(spec):
            hits = [n for n, _ in named if _glob(spec).fullmatch(n)]
            if not hits:
                raise ValueError(f"layer pattern {spec!r} matches no module name; "
                                 f"{_hint(model, spec.replace('*', ''))}")
            chosen.update(hits)
        elif isinstance(spec, str):
            find_module(model, spec, "layer")
            chosen.add(spec)
        else:
            raise TypeError(f"a layer must be a module name, a glob pattern or an nn.Module, "
                            f"got {type(spec).__name__}")
    return [(n, m) for n, m in named if n in chosen]


@functools.lru_cache(maxsize=64)
def _glob(pattern: str) -> re.Pattern[str]:
    """A module-name glob: ``*`` and ``?`` stay within one dotted part ("layer*" matches
    layer1 but not layer1.0), ``**`` crosses dots, ``[...]`` as in fnmatch."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^.]*")
        elif ch == "?":
            out.append("[^.]")
        elif ch == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out))


def check_classifier(clf: nn.Module) -> None:
    """Raise ValueError unless ``clf`` has a 2-D ``weight`` (C, d) and a (C,) ``bias`` or None."""
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


def output_tensors(out: Any, depth: int = 0) -> list[torch.Tensor]:
    """The tensors a model's output holds: itself, a mapping's ``logits`` (else every value,
    as in Hugging Face outputs), or the items of a tuple/list."""
    if isinstance(out, torch.Tensor):
        return [out]
    if depth > 2:
        return []
    if isinstance(out, Mapping):
        if isinstance(out.get("logits"), torch.Tensor):
            return [out["logits"]]
        return [t for v in out.values() for t in output_tensors(v, depth + 1)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_tensors(v, depth + 1)]
    return []


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.numel() == b.numel() and a.shape[0] == b.shape[0]
                      and torch.equal(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)))


def pick_classifier(model: nn.Module, linear_outputs: Mapping[str, torch.Tensor],
                    model_output: Any) -> str:
    """The name of the one nn.Linear whose output (on one batch) is the model's output.

    ``linear_outputs`` maps every nn.Linear's name to its output on that batch. None or
    several fitting raise ValueError naming the candidates and how to choose.
    """
    outs = output_tensors(model_output)
    fits = [n for n, o in linear_outputs.items() if any(_same(o, t) for t in outs)]
    if len(fits) == 1:
        return fits[0]
    names = ", ".join(repr(n) for n in linear_outputs) or "none"
    if not fits:
        raise ValueError(
            "cannot tell which nn.Linear is the classifier: none of their outputs is the "
            f"model's output (nn.Linear modules: {names}); name it with classifier='NAME', "
            "or pass classifier=False to measure without one"
        )
    raise ValueError(
        f"several nn.Linear modules produce the model's output: {', '.join(map(repr, fits))}; "
        "name the classifier with classifier='NAME'"
    )
