"""Atomic file writes and safe loads: nothing half-written, nothing unpickled."""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike


def _default_file_mode() -> int:
    """Permission bits a plain ``open(path, "w")`` would give (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one.

    Atomic (a temporary file renamed over the target) for regular files and new paths. A
    symbolic link is kept and its target written (atomically). Devices, FIFOs and sockets are
    written in place (a rename would replace them), and ``"-"`` means standard output.
    """
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:  # a parent is a file: the write below says so
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        with open(path, "wb") as fh:  # a device or FIFO: in place, never replaced
            fh.write(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    mode = stat.S_IMODE(st.st_mode) if st is not None else _FILE_MODE
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600 files; keep the old file's mode, else umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON (NaN/Inf written as null)."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=indent, sort_keys=False) + "\n")


def atomic_write_jsonl(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Atomically write one JSON object per line."""
    text = "".join(json.dumps(_finite(dict(r))) + "\n" for r in rows)
    atomic_write_text(path, text)


def atomic_savefig(fig: Any, path: PathLike, **savefig_kwargs: Any) -> Path:
    """Render a matplotlib figure (format from the suffix unless given) and write it atomically."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    buf = io.BytesIO()
    fig.savefig(buf, **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return path


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file, then rename over ``path``."""
    import torch  # here, not at the top: `ncollapse --help` and the readers need no torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a ``.pt`` file holding only tensors and plain containers (``weights_only=True``)."""
    import torch  # here, not at the top: `ncollapse --help` and the readers need no torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises UnpicklingError subclasses with long texts
        raise ValueError(
            f"{path}: cannot be loaded safely ({type(exc).__name__}). Only files of tensors, "
            "numbers, strings, lists and dicts are accepted; re-save it with "
            "torch.save({'features': ..., 'labels': ...})."
        ) from exc


def _finite(obj: Any) -> Any:
    """Replace non-finite floats by None so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
