"""Classifiers in plain torch: an MLP, a VGG-style CNN and ResNet-18 with the CIFAR stem.

Every model built here is an :class:`NCModel`: ``features(x)`` returns the penultimate
activations ``(B, feature_dim)`` (after the last nonlinearity), ``classifier`` is the final
``nn.Linear`` (the last registered module) and ``forward(x) == classifier(features(x))``.
:func:`fix_classifier_to_etf` freezes the classifier to a simplex ETF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ncollapse.geometry import simplex_etf

__all__ = [
    "MODELS",
    "MLP",
    "VGG",
    "VGG_CONFIGS",
    "NCModel",
    "ResNet18",
    "build_model",
    "count_parameters",
    "fix_classifier_to_etf",
]

MODELS = ("mlp", "vgg", "resnet18")

#: Convolutions per stage of VGG-11/13/16/19; stage channels are width·(1, 2, 4, 8, 8).
VGG_CONFIGS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4),
}
_DEFAULTS = {"mlp": (512, 3), "vgg": (64, 11), "resnet18": (64, 18)}  # (width, depth)
#: What ``build_model`` uses when width, depth or batchnorm is None, per model.
MODEL_DEFAULTS = {name: {"width": w, "depth": d, "batchnorm": name != "mlp"}
                  for name, (w, d) in _DEFAULTS.items()}


class NCModel(nn.Module):
    """Base class: subclasses define ``body`` (input → features) and ``classifier`` last."""

    feature_dim: int
    classifier: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations, shape (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _norm1d(n: int, on: bool) -> nn.Module:
    return nn.BatchNorm1d(n) if on else nn.Identity()


def _norm2d(n: int, on: bool) -> nn.Module:
    return nn.BatchNorm2d(n) if on else nn.Identity()


class MLP(NCModel):
    """Flatten, then ``depth`` × [Linear(width) → (BatchNorm1d) → ReLU], then the classifier."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, width: int = 512,
                 depth: int = 3, batchnorm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), _norm1d(width, batchnorm), nn.ReLU(inplace=True)]
            n_in = width
        self.body = nn.Sequential(*layers)
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)


class VGG(NCModel):
    """VGG-style CNN: stages of conv3×3 → BatchNorm → ReLU with 2×2 max-pools, global
    average pooling, one hidden Linear → (BatchNorm1d) → ReLU of width 8·width, classifier.

    ``depth`` ∈ {11, 13, 16, 19} picks the convolution layout of VGG-``depth``
    (:data:`VGG_CONFIGS`); stage channels are width·(1, 2, 4, 8, 8). A max-pool is skipped
    once the feature map is 1×1, so 8×8, 28×28 and 32×32 inputs all work.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, width: int = 64,
                 depth: int = 11, batchnorm: bool = True) -> None:
        super().__init__()
        in_ch, h, w = input_shape
        layers: list[nn.Module] = []
        for stage, n_convs in enumerate(VGG_CONFIGS[depth]):
            out_ch = width * (1, 2, 4, 8, 8)[stage]
            for _ in range(n_convs):
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batchnorm),
                           _norm2d(out_ch, batchnorm), nn.ReLU(inplace=True)]
                in_ch = out_ch
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        hidden = 8 * width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, hidden),
                   _norm1d(hidden, batchnorm), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)


class _BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=not batchnorm)
        self.bn1 = _norm2d(out_ch, batchnorm)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=not batchnorm)
        self.bn2 = _norm2d(out_ch, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=not batchnorm), _norm2d(out_ch, batchnorm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(NCModel):
    """ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max-pool), BasicBlocks
    [2, 2, 2, 2] with widths width·(1, 2, 4, 8) and strides (1, 2, 2, 2), global average
    pooling; features are the pooled (post-ReLU) activations of dimension 8·width."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, width: int = 64,
                 batchnorm: bool = True) -> None:
        super().__init__()
        in_ch = input_shape[0]
        layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 3, 1, 1, bias=not batchnorm),
                                   _norm2d(width, batchnorm), nn.ReLU(inplace=True)]
        ch = width
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            out = width * mult
            layers += [_BasicBlock(ch, out, stride, batchnorm), _BasicBlock(out, out, 1, batchnorm)]
            ch = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.feature_dim = ch
        self.classifier = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _positive_int(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{key} must be a positive int, got {value!r}")
    return int(value)


def build_model(name: str, *, input_shape: Sequence[int], num_classes: int,
                width: int | None = None, depth: int | None = None,
                batchnorm: bool | None = None, fixed_etf_classifier: bool = False,
                seed: int | None = None) -> NCModel:
    """Build a classifier by name (``MODELS``) for inputs of ``input_shape`` and C classes.

    - ``mlp``: width (default 512) units in each of depth (default 3) hidden layers;
      BatchNorm1d when ``batchnorm`` (default off). Any input shape (flattened).
    - ``vgg``: base channels width (default 64), depth ∈ {11, 13, 16, 19} (default 11);
      BatchNorm unless ``batchnorm=False``. Inputs (channels, H, W).
    - ``resnet18``: base channels width (default 64), depth must be 18 or None;
      BatchNorm unless ``batchnorm=False``. Inputs (channels, H, W).

    ``batchnorm=None`` means the model's default. ``fixed_etf_classifier=True`` applies
    :func:`fix_classifier_to_etf`. ``seed`` makes the initialisation reproducible without
    touching the global torch RNG.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(MODELS)}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape}")
    num_classes = _positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    width = _positive_int("width", _DEFAULTS[name][0] if width is None else width)
    depth = _positive_int("depth", _DEFAULTS[name][1] if depth is None else depth)
    if name != "mlp" and len(shape) != 3:
        raise ValueError(f"{name} needs image inputs (channels, height, width), got input_shape "
                         f"{shape}; use the mlp for vector inputs")
    if name == "vgg" and depth not in VGG_CONFIGS:
        raise ValueError(f"vgg depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
    if name == "resnet18" and depth != 18:
        raise ValueError(f"resnet18 has depth 18, got depth={depth}; leave depth unset")

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if name == "mlp":
            model: NCModel = MLP(shape, num_classes, width=width, depth=depth,
                                 batchnorm=bool(batchnorm))
        elif name == "vgg":
            model = VGG(shape, num_classes, width=width, depth=depth,
                        batchnorm=batchnorm is not False)
        else:
            model = ResNet18(shape, num_classes, width=width, batchnorm=batchnorm is not False)
    if fixed_etf_classifier:
        fix_classifier_to_etf(model)
    return model


def fix_classifier_to_etf(model: nn.Module, *, scale: float = 1.0,
                          seed: int | None = None) -> nn.Module:
    """Set ``model.classifier`` to a simplex ETF and freeze it (no gradient, never trained).

    The weight rows are the C vectors of :func:`ncollapse.geometry.simplex_etf` with norm
    ``scale`` in R^feature_dim (canonical orientation, or a random rotation fixed by ``seed``);
    the bias, if any, is zero. Needs feature_dim ≥ C − 1. Returns the model.
    """
    clf = getattr(model, "classifier", None)
    if not isinstance(clf, nn.Linear):
        raise TypeError("model must have an nn.Linear attribute 'classifier', got "
                        f"{type(clf).__name__}")
    c, d = clf.weight.shape
    if d < c - 1:
        raise ValueError(f"a simplex ETF of {c} classes needs feature_dim >= {c - 1}, got {d}; "
                         "widen the model")
    etf = simplex_etf(c, d, scale=scale, seed=seed)
    with torch.no_grad():
        clf.weight.copy_(torch.from_numpy(etf).to(clf.weight.dtype))
        if clf.bias is not None:
            clf.bias.zero_()
    clf.weight.requires_grad_(False)
    if clf.bias is not None:
        clf.bias.requires_grad_(False)
    return model


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with requires_grad if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
