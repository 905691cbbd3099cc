"""Where each dataset is looked for when no ``root=`` is given."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "default_root"]

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


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
