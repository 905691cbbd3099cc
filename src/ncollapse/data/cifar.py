"""CIFAR-10 / CIFAR-100 in their binary or python-pickle layouts, from directories or the
``.tar.gz`` downloads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ncollapse.data.dataset import Splits
from ncollapse.data.untrusted import restricted_pickle_load, safe_extract_tar

__all__ = ["CIFAR10_CLASSES", "CIFAR_ARCHIVES", "load_cifar", "read_cifar_binary"]

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
        f"the archive from https://www.cs.toronto.edu/~kriz/cifar.html into it, or point "
        f"--root DIR (Python: root=DIR) at the folder that holds it"
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


def load_cifar(name: str, splits: Sequence[str], root: Path) -> tuple[Splits, list[str]]:
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
