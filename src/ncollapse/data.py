"""Datasets for training into the terminal phase: real image sets and a synthetic mixture.

Every dataset is loaded fully into memory as a :class:`ClassificationDataset` (inputs
float32, targets int64), optionally reduced to a balanced or deliberately imbalanced subset
and standardised with statistics of the *training* split.

Names (``DATASETS``):

- ``digits``: scikit-learn's bundled 8×8 digits (1797 images, 10 classes, always available).
  Inputs are ``(1, 8, 8)`` images with pixel values divided by 16 (so convolutional models
  work too). The train/test split is a fixed stratified 80/20 split
  (``DIGITS_SPLIT_SEED``, independent of the run seed): 1437 train, 360 test images.
- ``fashion-mnist``, ``mnist``: the four standard IDX files (gzipped or not) in ``root``;
  inputs ``(1, 28, 28)``, pixels divided by 255. Fashion-MNIST is found automatically in
  Debian's ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).
  ``download=True`` fetches missing files and checks their SHA-256 (see :func:`download_idx`).
- ``cifar10``, ``cifar100``: the binary archives (``cifar-10-batches-bin``,
  ``cifar-100-binary``, fine labels) or the python-pickle ones (``cifar-10-batches-py``,
  ``cifar-100-python``, read by a restricted unpickler that admits only arrays, lists, dicts,
  strings and numbers), as directories in ``root`` or as the ``.tar.gz`` downloads (extracted
  into ``root``, refusing links and paths that leave it). Inputs ``(3, 32, 32)``, pixels / 255.
- ``gaussian``: a synthetic mixture with class means on a simplex ETF (see :func:`make_gaussian`).

Default roots: ``$NCOLLAPSE_DATA_DIR/<name>`` when that variable is set, otherwise
``~/.cache/ncollapse/<name>``; for Fashion-MNIST the Debian directory comes first when it exists.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ncollapse.io import atomic_write_bytes

__all__ = [
    "CIFAR_ARCHIVES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_SPLIT_SEED",
    "FASHION_MNIST_MIRROR",
    "IDX_FILES",
    "IDX_SHA256",
    "IMBALANCE_PROFILES",
    "MNIST_MIRROR",
    "SPLITS",
    "ClassificationDataset",
    "class_counts",
    "default_root",
    "download_idx",
    "imbalanced_counts",
    "load_dataset",
    "make_gaussian",
    "read_cifar_binary",
    "read_idx",
    "restricted_pickle_load",
    "safe_extract_tar",
    "subset_indices",
]

DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "gaussian")
SPLITS = ("train", "test")
IMBALANCE_PROFILES = (None, "step", "exp")
DIGITS_SPLIT_SEED = 20240  # fixed: the digits split never depends on the run seed
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# ---------------------------------------------------------------------------------------------
# The dataset object


class ClassificationDataset(Dataset):
    """In-memory classification data: ``dataset[i] == (inputs[i], targets[i])``.

    Attributes: ``inputs`` (N, *input_shape) float32, ``targets`` (N,) int64, ``num_classes``,
    ``input_shape`` (tuple), ``class_names`` (list of str), ``name``, ``split``, and
    ``normalization`` = (mean, std) float64 arrays used to standardise the inputs, or None.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, *, num_classes: int,
                 class_names: Sequence[str], name: str, split: str,
                 normalization: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets differ in length: {inputs.shape[0]} vs {targets.shape[0]}"
            )
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.inputs = inputs.to(torch.float32).contiguous()
        self.targets = targets.to(torch.int64).contiguous()
        if self.targets.numel() and (
            int(self.targets.min()) < 0 or int(self.targets.max()) >= num_classes
        ):
            raise ValueError(f"targets must lie in [0, {num_classes}), "
                             f"got range [{int(self.targets.min())}, {int(self.targets.max())}]")
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in class_names]
        self.name = name
        self.split = split
        self.normalization = normalization

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.inputs.shape[1:])

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def class_counts(self) -> list[int]:
        """Number of samples of each class, length ``num_classes``."""
        return class_counts(self.targets, self.num_classes)

    def __repr__(self) -> str:
        return (f"ClassificationDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, num_classes={self.num_classes})")


def class_counts(targets: Any, num_classes: int) -> list[int]:
    """Number of samples of each class in ``targets``."""
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)
    return [int(v) for v in np.bincount(t, minlength=num_classes)[:num_classes]]


# ---------------------------------------------------------------------------------------------
# Subsets: balanced and imbalanced


def imbalanced_counts(n: int, num_classes: int, profile: str | None, ratio: float) -> list[int]:
    """Samples per class for an imbalance profile with largest class ``n`` and ratio R ≥ 1.

    - ``None``: n for every class.
    - ``"step"``: the first ⌊C/2⌋ classes (majority) keep n, the others get ⌊n/R⌋.
    - ``"exp"``: class c (0-based) gets ⌊n·R^(−c/(C−1))⌋, from n down to ⌊n/R⌋.
    Every class keeps at least one sample.
    """
    _check_choice("imbalance", profile, IMBALANCE_PROFILES)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not np.isfinite(ratio) \
            or ratio < 1:
        raise ValueError(f"ratio must be a finite number >= 1, got {ratio!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if profile is None:
        return [n] * num_classes
    if profile == "step":
        majority = max(1, num_classes // 2)
        return [n if c < majority else max(1, int(n / ratio)) for c in range(num_classes)]
    if num_classes == 1:
        return [n]
    return [max(1, int(n * ratio ** (-c / (num_classes - 1)))) for c in range(num_classes)]


def subset_indices(targets: Any, counts: Sequence[int], *, seed: int | None = 0) -> np.ndarray:
    """Indices taking ``counts[c]`` samples of every class c, in increasing order.

    ``seed=None`` takes the first samples of each class in dataset order; an int takes a
    random choice, the same for the same seed. Raises ValueError if a class has too few.
    """
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.int64)
    rng = None if seed is None else np.random.default_rng(seed)
    chosen = []
    for c, k in enumerate(counts):
        idx = np.flatnonzero(t == c)
        if k > idx.size:
            raise ValueError(
                f"class {c} has only {idx.size} samples but {k} were requested; "
                "lower per_class (or the imbalance ratio)"
            )
        if rng is not None:
            idx = rng.permutation(idx)
        chosen.append(idx[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# digits and the Gaussian mixture


def _load_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data.astype(np.float64) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def make_gaussian(*, num_classes: int = 10, dim: int = 32, per_class: int = 100,
                  separation: float = 4.0, noise: float = 1.0, seed: int = 0,
                  split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Gaussian mixture: x = μ_y + noise·z, z ~ N(0, I_dim), ``per_class`` samples per class.

    The means μ_c are the rows of a randomly rotated simplex ETF with norm ``separation``
    (pairwise distance separation·sqrt(2C/(C−1))), fixed by ``seed``. The train and test
    splits draw their noise from different streams of the same seed. Samples are ordered by
    class. Returns ``(inputs (N, dim), targets (N,), means (C, dim))`` in float64 / int64.
    """
    from ncollapse.geometry import simplex_etf

    _check_choice("split", split, SPLITS)
    for key, val in (("num_classes", num_classes), ("dim", dim), ("per_class", per_class)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"{key} must be a positive int, got {val!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if dim < num_classes - 1:
        raise ValueError(f"dim must be >= num_classes - 1 = {num_classes - 1} for a simplex ETF "
                         f"of means, got dim={dim}")
    for key, val in (("separation", separation), ("noise", noise)):
        if not np.isfinite(val) or val < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {val!r}")
    if separation == 0:
        means = np.zeros((num_classes, dim))
    else:
        means = simplex_etf(num_classes, dim, scale=float(separation),
                            seed=np.random.default_rng([seed, 0]))
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    y = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    x = means[y] + float(noise) * rng.standard_normal((y.size, dim))
    return x, y, means


# ---------------------------------------------------------------------------------------------
# Normalization


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel (images, axis 1 of (N, C, H, W)) or per feature (vectors)."""
    axes = (0,) if x.ndim == 2 else (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64)
    std = x.std(axis=axes, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)  # constant features stay constant (at zero)
    return mean, std


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / std.reshape(shape)


# ---------------------------------------------------------------------------------------------
# The entry point


def _check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {key} {value!r}; valid choices: "
                         + ", ".join(repr(c) for c in choices))


_GAUSSIAN_OPTIONS = ("num_classes", "dim", "separation", "noise", "test_per_class")
_IDX_OPTIONS = ("mirror", "sha256")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "digits": (), "gaussian": _GAUSSIAN_OPTIONS, "fashion-mnist": _IDX_OPTIONS,
    "mnist": _IDX_OPTIONS, "cifar10": (), "cifar100": (),
}


def load_dataset(name: str, *, split: str = "train", root: str | os.PathLike | None = None,
                 download: bool = False, per_class: int | None = None,
                 imbalance: str | None = None, ratio: float = 1.0, normalize: bool = True,
                 seed: int | None = 0, **options: Any) -> ClassificationDataset:
    """Load one split of a dataset as an in-memory :class:`ClassificationDataset`.

    Subsets (applied to the split that is loaded; for the usual protocol pass them for the
    train split only): ``per_class`` = n keeps n samples of each class; ``imbalance``
    (``"step"`` or ``"exp"``, with ``ratio`` R ≥ 1) keeps the counts of
    :func:`imbalanced_counts` with largest class n (n defaults to the smallest class size).
    Samples are drawn at random with ``seed`` (``seed=None``: the first ones in file order).

    ``normalize=True`` standardises every channel (images) or feature (vectors) with the mean
    and std of the *full training split*, for the test split too.

    ``options``: for ``gaussian`` ``num_classes`` (10), ``dim`` (32), ``separation`` (4.0),
    ``noise`` (1.0) and ``test_per_class`` (default: the same as per_class); there
    ``per_class`` (default 100) is the number of generated samples per class and ``seed``
    fixes the means and the noise (0 if None). For ``mnist``/``fashion-mnist``
    ``mirror`` (download base URL) and ``sha256`` (``{file name: digest}`` overriding the
    known digests of the decompressed files).
    """
    _check_choice("dataset", name, DATASETS)
    _check_choice("split", split, SPLITS)
    _check_choice("imbalance", imbalance, IMBALANCE_PROFILES)
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

    if name == "gaussian":
        data, class_names = _gaussian_splits(per_class, seed, **options)
        per_class_subset = None  # per_class is the generated size, already exact
    else:
        data, class_names = _load_real(name, split, normalize, root, download, options)
        per_class_subset = per_class

    x, y = data[split]
    num_classes = len(class_names)
    if per_class_subset is not None or imbalance is not None:
        present = class_counts(y, num_classes)
        n = per_class_subset if per_class_subset is not None else min(present)
        counts = imbalanced_counts(int(n), num_classes, imbalance, ratio)
        idx = subset_indices(y, counts, seed=seed)
        x, y = x[idx], y[idx]

    norm = None
    if normalize:
        mean, std = _stats(data["train"][0])
        x = _standardize(x, mean, std)
        norm = (mean, std)
    return ClassificationDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        num_classes=num_classes, class_names=class_names, name=name, split=split,
        normalization=norm,
    )


def _gaussian_splits(per_class: int | None, seed: int | None, *, num_classes: int = 10,
                     dim: int = 32, separation: float = 4.0, noise: float = 1.0,
                     test_per_class: int | None = None
                     ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    n_train = 100 if per_class is None else per_class
    n_test = n_train if test_per_class is None else test_per_class
    seed = 0 if seed is None else int(seed)
    kw = dict(num_classes=num_classes, dim=dim, separation=separation, noise=noise, seed=seed)
    x_tr, y_tr, _ = make_gaussian(per_class=n_train, split="train", **kw)
    x_te, y_te, _ = make_gaussian(per_class=n_test, split="test", **kw)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}, [f"class {c}" for c in
                                                            range(num_classes)]


def _load_real(name: str, split: str, normalize: bool, root: Any, download: bool,
               options: dict[str, Any]
               ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Both splits when normalising (train statistics are needed), else the requested one."""
    if name == "digits":
        return _load_digits(), [str(d) for d in range(10)]
    raise NotImplementedError(name)
