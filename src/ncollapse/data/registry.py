"""The dataset names and the one entry point, :func:`load_dataset`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncollapse.data.cifar import load_cifar
from ncollapse.data.dataset import (
    IMBALANCE_PROFILES,
    SPLITS,
    ClassificationDataset,
    Splits,
    check_choice,
    class_counts,
    imbalanced_counts,
    subset_indices,
)
from ncollapse.data.download import download_idx
from ncollapse.data.idx import IDX_FILES, find_idx_file, read_idx
from ncollapse.data.normalization import channel_stats, standardize_float32
from ncollapse.data.roots import default_root
from ncollapse.data.synthetic import gaussian_splits, load_digits

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "load_dataset"]

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "gaussian")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


_GAUSSIAN_OPTIONS = ("num_classes", "dim", "separation", "noise", "test_per_class")
_IDX_OPTIONS = ("mirror", "sha256")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "digits": (), "gaussian": _GAUSSIAN_OPTIONS, "fashion-mnist": _IDX_OPTIONS,
    "mnist": _IDX_OPTIONS, "cifar10": (), "cifar100": (),
}
_PIXEL_SCALE = {"digits": 16.0, "fashion-mnist": 255.0, "mnist": 255.0, "cifar10": 255.0,
                "cifar100": 255.0, "gaussian": 1.0}


def load_dataset(name: str, *, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool = False, per_class: int | None = None,
                 imbalance: str | None = None, ratio: float = 1.0, normalize: bool = True,
                 seed: int | None = 0, **options: Any) -> ClassificationDataset:
    """Load one split of a dataset as an in-memory :class:`ClassificationDataset`.

    Pixels are scaled to [0, 1] (digits: /16, others: /255). Subsets (applied to the split
    that is loaded; for the usual protocol pass them for the train split only):
    ``per_class`` = n keeps n samples of each class; ``imbalance`` (``"step"`` or ``"exp"``,
    with ``ratio`` R ≥ 1) keeps the counts of :func:`imbalanced_counts` with largest class n
    (n defaults to the smallest class size). Samples are drawn at random with ``seed``
    (``seed=None``: the first ones in file order).

    ``normalize=True`` standardises every channel (images) or feature (vectors) with the mean
    and std of the *full training split* (before any subset), for the test split too;
    ``dataset.normalization`` holds them. ``root``: see :func:`default_root`.

    ``options``: for ``gaussian`` ``num_classes`` (10), ``dim`` (32), ``separation`` (4.0),
    ``noise`` (1.0) and ``test_per_class`` (default: the same as per_class); there
    ``per_class`` (default 100) is the number of generated samples per class and ``seed``
    fixes the means and the noise (0 if None). For ``mnist``/``fashion-mnist``: ``mirror``
    (download base URL) and ``sha256`` (``{file name: digest}``), see :func:`download_idx`.
    """
    check_choice("dataset", name, DATASETS)
    check_choice("split", split, SPLITS)
    check_choice("imbalance", imbalance, IMBALANCE_PROFILES)
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        valid = ", ".join(_OPTIONS[name]) or "none"
        raise ValueError(f"unknown option(s) {unknown} for dataset {name!r}; valid: {valid}")
    if per_class is not None and (isinstance(per_class, bool)
                                  or not isinstance(per_class, (int, np.integer))
                                  or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}")
    imbalanced_counts(1, 2, imbalance, ratio)  # validates ratio
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")

    splits = ("train", split) if normalize and split != "train" else (split,)
    subset_n = per_class
    if name == "gaussian":
        data, class_names = gaussian_splits(per_class, seed, **options)
        subset_n = None  # per_class is the generated size, already exact
    elif name == "digits":
        data, class_names = load_digits(), [str(d) for d in range(10)]
    else:
        root_path = Path(root) if root is not None else default_root(name)
        if name in ("mnist", "fashion-mnist"):
            data = _load_idx(name, splits, root_path, download, options)
            class_names = (list(FASHION_MNIST_CLASSES) if name == "fashion-mnist"
                           else [str(d) for d in range(10)])
        else:
            if download:
                raise ValueError(f"--download (download=True) is not supported for {name}; "
                                 "download the archive from "
                                 "https://www.cs.toronto.edu/~kriz/cifar.html and pass --root "
                                 "DIR (root=DIR)")
            data, class_names = load_cifar(name, splits, root_path)

    x, y = data[split]
    num_classes = len(class_names)
    if subset_n is not None or imbalance is not None:
        n = subset_n if subset_n is not None else min(class_counts(y, num_classes))
        counts = imbalanced_counts(int(n), num_classes, imbalance, ratio)
        idx = subset_indices(y, counts, seed=seed)
        x, y = x[idx], y[idx]

    scale = _PIXEL_SCALE[name]
    norm = None
    if normalize:
        mean, std = channel_stats(data["train"][0])
        norm = (mean / scale, std / scale)
    return ClassificationDataset(
        torch.from_numpy(standardize_float32(x, scale, norm)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        num_classes=num_classes, class_names=class_names, name=name, split=split,
        normalization=norm,
    )


def _load_idx(name: str, splits: Sequence[str], root: Path, download: bool,
              options: dict[str, Any]) -> Splits:
    if download:
        download_idx(name, root, mirror=options.get("mirror"), sha256=options.get("sha256"))
    out = {}
    for split in splits:
        arrays = []
        for base in IDX_FILES[split]:
            path = find_idx_file(root, base)
            if path is None:
                raise FileNotFoundError(
                    f"{name}: {base}(.gz) not found in {root}; point --root DIR (Python: "
                    "root=DIR) at a folder with the four IDX files, or add --download "
                    "(download=True) to fetch them"
                )
            arrays.append(read_idx(path))
        images, labels = arrays
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{name} {split}: images {images.shape} and labels {labels.shape} "
                             "do not match (expected (N, H, W) and (N,))")
        out[split] = (images.astype(np.uint8)[:, None], labels.astype(np.int64))
    return out
