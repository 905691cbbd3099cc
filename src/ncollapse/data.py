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

import functools
import gzip
import hashlib
import http.client
import math
import os
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ncollapse.io import atomic_write_bytes

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

_Splits = dict[str, tuple[np.ndarray, np.ndarray]]


@functools.lru_cache(maxsize=1)
def _digits_split() -> _Splits:
    """The fixed digits split, read from scikit-learn once per process."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.uint8).reshape(-1, 1, 8, 8)  # integer values 0..16
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def _load_digits() -> _Splits:
    """Fresh copies of the cached digits split (callers may modify them)."""
    return {k: (x.copy(), y.copy()) for k, (x, y) in _digits_split().items()}


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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if dim < num_classes - 1:
        raise ValueError(f"dim must be >= num_classes - 1 = {num_classes - 1} for a simplex ETF "
                         f"of means, got dim={dim}")
    for key, val in (("separation", separation), ("noise", noise)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not np.isfinite(val) \
                or val < 0:
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
# IDX files (MNIST, Fashion-MNIST) and their download

IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_MIRRORS = {
    "fashion-mnist": (FASHION_MNIST_MIRROR, "NCOLLAPSE_FASHION_MNIST_MIRROR"),
    "mnist": (MNIST_MIRROR, "NCOLLAPSE_MNIST_MIRROR"),
}
#: SHA-256 of the *decompressed* IDX files (gzip re-compression changes the .gz bytes but
#: not these). Fashion-MNIST: computed from Debian's dataset-fashion-mnist files, whose
#: contents are the canonical ones (60000/10000 images of 28×28). MNIST: no copy was at hand
#: to compute the digests from, so none are listed; a download then warns and prints the
#: digests it computed, and ``sha256=`` supplies them.
IDX_SHA256: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "mnist": {},
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DownloadError(RuntimeError):
    """A file could not be fetched (network, HTTP or mirror problem)."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the known digest."""


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{source}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + dtype.itemsize * math.prod(shape)
    if len(data) != expected:
        raise ValueError(f"{source}: IDX header promises shape {shape} ({expected} bytes) but the "
                         f"file has {len(data)} bytes; it is truncated or corrupt")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzipped) as a numpy array of its shape and native dtype."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        data = _maybe_gunzip(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip data ({exc})") from exc
    return _parse_idx(data, str(path))


def _find_file(root: Path, base: str) -> Path | None:
    for candidate in (root / base, root / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _sha256_raw(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(_maybe_gunzip(fh.read())).hexdigest()


def download_idx(name: str, root: str | os.PathLike | None = None, *, mirror: str | None = None,
                 sha256: dict[str, str] | None = None, timeout: float = 60.0) -> Path:
    """Fetch the four IDX files of ``mnist`` or ``fashion-mnist`` into ``root``; return root.

    Files already present with the right digest are kept. Each file is fetched as
    ``<mirror>/<file>.gz``; the mirror is ``mirror``, else the environment variable
    ``NCOLLAPSE_MNIST_MIRROR`` / ``NCOLLAPSE_FASHION_MNIST_MIRROR``, else
    ``MNIST_MIRROR`` / ``FASHION_MNIST_MIRROR``. The SHA-256 of the decompressed content
    must match ``sha256`` (``{file name without .gz: hex digest}``) or else
    :data:`IDX_SHA256`; a file without a known digest is accepted after it parses as IDX, with
    a warning that prints its digest. Files are written atomically, nothing on a mismatch
    (:class:`ChecksumError`); network failures raise :class:`DownloadError`.
    """
    if name not in _MIRRORS:
        raise ValueError(f"download_idx serves {', '.join(_MIRRORS)}; got {name!r}")
    root = Path(root) if root is not None else default_root(name)
    default_mirror, env = _MIRRORS[name]
    base_url = (mirror or os.environ.get(env) or default_mirror).rstrip("/") + "/"
    digests = dict(IDX_SHA256[name])
    digests.update(sha256 or {})
    for base in (*IDX_FILES["train"], *IDX_FILES["test"]):
        expected = digests.get(base)
        existing = _find_file(root, base)
        if existing is not None and (expected is None or _sha256_raw(existing) == expected):
            continue
        url = base_url + base + ".gz"
        payload = _fetch(url, root, timeout)
        try:
            raw = _maybe_gunzip(payload)
        except (OSError, EOFError, zlib.error) as exc:
            raise ChecksumError(f"{url}: not valid gzip data ({exc}); nothing was written. "
                                f"Retry, use another mirror ({env}) or place the files in "
                                f"{root} manually") from exc
        got = hashlib.sha256(raw).hexdigest()
        if expected is None:
            _parse_idx(raw, url)
            warnings.warn(f"{url}: no known SHA-256 to verify against; the file parses as IDX "
                          f"and its decompressed SHA-256 is {got}", stacklevel=2)
        elif got != expected:
            raise ChecksumError(
                f"checksum mismatch for {url}: expected SHA-256 {expected} of the decompressed "
                f"file, got {got}; nothing was written. The download is corrupt or the mirror "
                f"serves other files: retry, use another mirror ({env}) or place the files in "
                f"{root} manually"
            )
        try:
            if existing is not None and existing.name == base:
                existing.unlink()  # a stale uncompressed copy would shadow the new file
            atomic_write_bytes(root / f"{base}.gz", payload)
        except OSError as exc:
            raise DownloadError(f"download failed: cannot write to {root} ({exc}); pass a "
                                "writable root= or place the files there manually") from exc
    return root


def _fetch(url: str, root: Path, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            chunks = []
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                      disable=None, leave=False) as bar:
                while chunk := resp.read(1 << 16):
                    chunks.append(chunk)
                    bar.update(len(chunk))
            return b"".join(chunks)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DownloadError(f"download failed: {url}: {exc}; place the files in {root} "
                            "manually") from exc


def _load_idx(name: str, splits: Sequence[str], root: Path, download: bool,
              options: dict[str, Any]) -> _Splits:
    if download:
        download_idx(name, root, mirror=options.get("mirror"), sha256=options.get("sha256"))
    out = {}
    for split in splits:
        arrays = []
        for base in IDX_FILES[split]:
            path = _find_file(root, base)
            if path is None:
                raise FileNotFoundError(
                    f"{name}: {base}(.gz) not found in {root}; pass root=DIR with the four IDX "
                    "files, or download=True"
                )
            arrays.append(read_idx(path))
        images, labels = arrays
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{name} {split}: images {images.shape} and labels {labels.shape} "
                             "do not match (expected (N, H, W) and (N,))")
        out[split] = (images.astype(np.uint8)[:, None], labels.astype(np.int64))
    return out


# ---------------------------------------------------------------------------------------------
# CIFAR archives

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
#: Per dataset: (binary directory, pickle directory, binary archive, pickle archive).
CIFAR_ARCHIVES = {
    "cifar10": ("cifar-10-batches-bin", "cifar-10-batches-py", "cifar-10-binary.tar.gz",
                "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-binary", "cifar-100-python", "cifar-100-binary.tar.gz",
                 "cifar-100-python.tar.gz"),
}
_CIFAR_BIN_FILES = {
    "cifar10": {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
    "cifar100": {"train": ["train.bin"], "test": ["test.bin"]},
}
_CIFAR_PY_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
}


def read_cifar_binary(path: str | os.PathLike, *, label_bytes: int = 1,
                      label_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR binary batch: records of ``label_bytes`` label bytes + 3072 pixel bytes.

    CIFAR-10: ``label_bytes=1``; CIFAR-100: ``label_bytes=2`` (coarse, fine), use
    ``label_index=1`` for the fine labels. Returns images (N, 3, 32, 32) uint8, labels int64.
    """
    data = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + 3 * 32 * 32
    if data.size == 0 or data.size % record:
        raise ValueError(f"{path}: {data.size} bytes is not a positive multiple of the "
                         f"{record}-byte CIFAR record")
    rows = data.reshape(-1, record)
    return (rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy(),
            rows[:, label_index].astype(np.int64))


_PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: only numpy arrays, lists, dicts, strings, "
            "bytes and numbers are allowed in a dataset file"
        )


def _check_plain(obj: Any, source: str) -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise pickle.UnpicklingError(f"{source}: refusing an array of Python objects")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, source)
            _check_plain(v, source)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, source)
    elif not isinstance(obj, (str, bytes, int, float, bool, type(None), np.generic)):
        raise pickle.UnpicklingError(f"{source}: refusing an object of type {type(obj).__name__}")


def restricted_pickle_load(path: str | os.PathLike) -> Any:
    """Unpickle a data file admitting only numpy arrays, lists, dicts, str, bytes and numbers.

    Any other global (a function or class, e.g. ``os.system``) raises
    ``pickle.UnpicklingError`` before it is called. Python-2 strings come back as bytes.
    """
    with open(path, "rb") as fh:
        obj = _RestrictedUnpickler(fh, encoding="bytes").load()
    _check_plain(obj, str(path))
    return obj


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar archive into ``dest``, refusing absolute paths, ``..``, links and devices.

    Every member is checked before anything is written; a bad one raises ValueError.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    top = dest.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            target = (top / m.name).resolve()
            if (Path(m.name).is_absolute() or ".." in Path(m.name).parts
                    or not (m.isfile() or m.isdir()) or not target.is_relative_to(top)):
                raise ValueError(f"{archive}: refusing unsafe member {m.name!r} (absolute path, "
                                 "'..', link or device); extract it by hand if you trust it")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: a second guard
            tar.extractall(top, members=members, filter="data")
        else:  # pragma: no cover - older Pythons; every member was checked above
            tar.extractall(top, members=members)
    return dest


def _cifar_dir(name: str, root: Path) -> tuple[str, Path]:
    """('bin' | 'py', directory), extracting an archive from root when needed."""
    bin_dir, py_dir, bin_tar, py_tar = CIFAR_ARCHIVES[name]
    probe_bin, probe_py = _CIFAR_BIN_FILES[name]["test"][0], _CIFAR_PY_FILES[name]["test"][0]
    for _ in range(2):
        for kind, d, probe in (("bin", root / bin_dir, probe_bin), ("bin", root, probe_bin),
                               ("py", root / py_dir, probe_py), ("py", root, probe_py)):
            if (d / probe).is_file():
                return kind, d
        archives = [root / a for a in (bin_tar, py_tar) if (root / a).is_file()]
        if not archives:
            break
        safe_extract_tar(archives[0], root)
    raise FileNotFoundError(
        f"{name}: none of {bin_dir}/, {py_dir}/, {bin_tar}, {py_tar} found in {root}; download "
        f"the archive from https://www.cs.toronto.edu/~kriz/cifar.html into it or pass root=DIR"
    )


def _cifar_names(name: str, kind: str, d: Path) -> list[str]:
    if kind == "bin":
        meta = d / ("batches.meta.txt" if name == "cifar10" else "fine_label_names.txt")
        if meta.is_file():
            names = [s.strip() for s in meta.read_text().splitlines() if s.strip()]
            return names
    else:
        meta = d / ("batches.meta" if name == "cifar10" else "meta")
        if meta.is_file():
            obj = restricted_pickle_load(meta)
            key = "label_names" if name == "cifar10" else "fine_label_names"
            names = obj.get(key.encode(), obj.get(key))
            if names is not None:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    return [f"class {c}" for c in range(100)]


def _load_cifar(name: str, splits: Sequence[str], root: Path) -> tuple[_Splits, list[str]]:
    kind, d = _cifar_dir(name, root)
    out = {}
    for split in splits:
        xs, ys = [], []
        if kind == "bin":
            for f in _CIFAR_BIN_FILES[name][split]:
                x, y = read_cifar_binary(d / f, label_bytes=1 if name == "cifar10" else 2,
                                         label_index=0 if name == "cifar10" else 1)
                xs.append(x)
                ys.append(y)
        else:
            key = b"labels" if name == "cifar10" else b"fine_labels"
            for f in _CIFAR_PY_FILES[name][split]:
                obj = restricted_pickle_load(d / f)
                if not isinstance(obj, dict):
                    raise ValueError(f"{d / f}: expected a dict, got {type(obj).__name__}")
                get = lambda k, o=obj: o.get(k, o.get(k.decode()))  # noqa: E731
                data, labels = get(b"data"), get(key)
                if data is None or labels is None:
                    raise ValueError(f"{d / f}: missing 'data' or '{key.decode()}'")
                xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(labels, dtype=np.int64))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    num_classes = 10 if name == "cifar10" else 100
    names = _cifar_names(name, kind, d)
    if len(names) != num_classes:
        names = [f"class {c}" for c in range(num_classes)]
    for split, (_, y) in out.items():
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} {split}: labels outside [0, {num_classes})")
    return out, names


# ---------------------------------------------------------------------------------------------
# Roots, normalization, the entry point


def default_root(name: str) -> Path:
    """Where ``name`` is looked for without ``root=``: ``$NCOLLAPSE_DATA_DIR/<name>`` if that
    variable is set, else (Fashion-MNIST only) Debian's directory if it exists, else
    ``~/.cache/ncollapse/<name>``."""
    env = os.environ.get("NCOLLAPSE_DATA_DIR")
    if env:
        return Path(env) / name
    if name == "fashion-mnist" and DEBIAN_FASHION_MNIST_DIR.is_dir():
        return DEBIAN_FASHION_MNIST_DIR
    return Path.home() / ".cache" / "ncollapse" / name


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 mean and std per channel (images, axis 1 of (N, C, H, W)) or per feature.

    For uint8 pixels the moments come exactly from a histogram per channel.
    """
    if x.dtype == np.uint8 and x.ndim == 4:
        values = np.arange(256, dtype=np.float64)
        mean, std = [], []
        for c in range(x.shape[1]):
            hist = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
            m = hist @ values / hist.sum()
            mean.append(m)
            std.append(np.sqrt(hist @ (values - m) ** 2 / hist.sum()))
        mean_a, std_a = np.array(mean), np.array(std)
    else:
        axes = (0,) if x.ndim == 2 else (0,) + tuple(range(2, x.ndim))
        xf = x.astype(np.float64)
        mean_a = xf.mean(axis=axes)
        std_a = xf.std(axis=axes)
    return mean_a, np.where(std_a > 0, std_a, 1.0)  # constant features stay constant


def _to_float32(x: np.ndarray, scale: float, norm: tuple[np.ndarray, np.ndarray] | None
                ) -> np.ndarray:
    """(x/scale − mean)/std as float32, mean/std given in the units of x/scale."""
    mean, std = (np.zeros(1), np.ones(1)) if norm is None else norm
    if x.dtype == np.uint8 and x.ndim == 4:
        out = np.empty(x.shape, dtype=np.float32)
        levels = np.arange(256, dtype=np.float64) / scale
        for c in range(x.shape[1]):
            lut = ((levels - mean[min(c, mean.size - 1)]) / std[min(c, std.size - 1)])
            out[:, c] = lut.astype(np.float32)[x[:, c]]
        return out
    shape = (1, -1) + (1,) * (x.ndim - 2)
    xf = x.astype(np.float64) / scale
    return ((xf - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


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

    splits = ("train", split) if normalize and split != "train" else (split,)
    subset_n = per_class
    if name == "gaussian":
        data, class_names = _gaussian_splits(per_class, seed, **options)
        subset_n = None  # per_class is the generated size, already exact
    elif name == "digits":
        data, class_names = _load_digits(), [str(d) for d in range(10)]
    else:
        root_path = Path(root) if root is not None else default_root(name)
        if name in ("mnist", "fashion-mnist"):
            data = _load_idx(name, splits, root_path, download, options)
            class_names = (list(FASHION_MNIST_CLASSES) if name == "fashion-mnist"
                           else [str(d) for d in range(10)])
        else:
            if download:
                raise ValueError(f"download=True is not supported for {name}; download the "
                                 "archive from https://www.cs.toronto.edu/~kriz/cifar.html")
            data, class_names = _load_cifar(name, splits, root_path)

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
        mean, std = _stats(data["train"][0])
        norm = (mean / scale, std / scale)
    return ClassificationDataset(
        torch.from_numpy(_to_float32(x, scale, norm)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        num_classes=num_classes, class_names=class_names, name=name, split=split,
        normalization=norm,
    )


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


def _gaussian_splits(per_class: int | None, seed: int | None, *, num_classes: int = 10,
                     dim: int = 32, separation: float = 4.0, noise: float = 1.0,
                     test_per_class: int | None = None) -> tuple[_Splits, list[str]]:
    n_train = 100 if per_class is None else per_class
    n_test = n_train if test_per_class is None else test_per_class
    seed = 0 if seed is None else int(seed)
    kw = dict(num_classes=num_classes, dim=dim, separation=separation, noise=noise, seed=seed)
    x_tr, y_tr, _ = make_gaussian(per_class=n_train, split="train", **kw)
    x_te, y_te, _ = make_gaussian(per_class=n_test, split="test", **kw)
    return ({"train": (x_tr, y_tr), "test": (x_te, y_te)},
            [f"class {c}" for c in range(num_classes)])
