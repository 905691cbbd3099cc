"""Reading untrusted dataset files: a restricted unpickler and a tar extractor that refuses
links, devices and paths leaving the destination."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["restricted_pickle_load", "safe_extract_tar"]

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
