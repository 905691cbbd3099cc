"""ncollapse: measure, train into, visualise and explain neural collapse."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("ncollapse")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

# The public API, imported on first use (PEP 562): ``import ncollapse`` alone, as the command
# line does to print its help, must not pay for importing torch.
_EXPORTS = {
    "NCAccumulator": "ncollapse.metrics",
    "NCMetrics": "ncollapse.metrics",
    "measure": "ncollapse.metrics",
    "collect_features": "ncollapse.collect",
    "measure_model": "ncollapse.collect",
    "training_means": "ncollapse.collect",
    "RunWriter": "ncollapse.rundir",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'ncollapse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
