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

Modules, one concept each: ``dataset`` (the in-memory object, class counts, subsets),
``registry`` (names and :func:`load_dataset`), ``synthetic`` (digits, Gaussian mixture),
``idx`` (the IDX format), ``download`` (fetching IDX files), ``cifar`` (CIFAR layouts),
``untrusted`` (restricted unpickler, safe tar extraction), ``normalization``, ``roots``.
"""

from __future__ import annotations

from ncollapse.data.cifar import CIFAR10_CLASSES, CIFAR_ARCHIVES, read_cifar_binary
from ncollapse.data.dataset import (
    IMBALANCE_PROFILES,
    SPLITS,
    ClassificationDataset,
    class_counts,
    imbalanced_counts,
    subset_indices,
)
from ncollapse.data.download import (
    FASHION_MNIST_MIRROR,
    IDX_SHA256,
    MNIST_MIRROR,
    ChecksumError,
    DownloadError,
    download_idx,
)
from ncollapse.data.idx import IDX_FILES, read_idx
from ncollapse.data.registry import DATASETS, FASHION_MNIST_CLASSES, load_dataset
from ncollapse.data.roots import DEBIAN_FASHION_MNIST_DIR, default_root
from ncollapse.data.synthetic import DIGITS_SPLIT_SEED, make_gaussian
from ncollapse.data.untrusted import restricted_pickle_load, safe_extract_tar

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR_ARCHIVES",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_SPLIT_SEED",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MIRROR",
    "IDX_FILES",
    "IDX_SHA256",
    "IMBALANCE_PROFILES",
    "MNIST_MIRROR",
    "SPLITS",
    "ChecksumError",
    "ClassificationDataset",
    "DownloadError",
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
