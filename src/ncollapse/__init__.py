"""ncollapse: measure, train into, visualise and explain neural collapse."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ncollapse")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from ncollapse.collect import collect_features, measure_model, training_means  # noqa: E402
from ncollapse.metrics import NCAccumulator, NCMetrics, measure  # noqa: E402
from ncollapse.rundir import RunWriter  # noqa: E402

__all__ = [
    "NCAccumulator",
    "NCMetrics",
    "RunWriter",
    "collect_features",
    "measure",
    "measure_model",
    "training_means",
    "__version__",
]
