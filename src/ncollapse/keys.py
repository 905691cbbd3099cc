"""Which key of a mapping holds what: the one place that knows the conventional names.

Used for dict batches in :mod:`ncollapse.collect` (inputs and labels) and for saved feature
files in ``ncollapse measure`` (features, labels, classifier). An explicit key always wins;
otherwise the first conventional name present is taken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FEATURE_KEYS", "INPUT_KEYS", "LABEL_KEYS", "pick_key"]

INPUT_KEYS = ("input", "inputs", "x", "image", "images", "data", "pixel_values")
FEATURE_KEYS = ("features", "feats", "h", "H", "embeddings")
LABEL_KEYS = ("labels", "label", "y", "targets", "target")


def pick_key(mapping: Mapping[Any, Any], key: str | None, defaults: Sequence[str], what: str,
             how_to_name: str, *, required: bool = True) -> Any:
    """The value of ``mapping`` under ``key``, or under the first of ``defaults`` present.

    ``what`` names the value in errors and ``how_to_name`` says how the caller names a key
    (e.g. ``"label_key=..."`` or ``"--labels KEY"``). A missing explicit ``key`` raises
    ValueError listing the available keys; so does finding none of ``defaults`` when
    ``required``, else None is returned.
    """
    available = ", ".join(sorted(map(str, mapping))) or "(none)"
    if key is not None:
        if key not in mapping:
            raise ValueError(f"no key {key!r} for the {what}; available keys: {available}")
        return mapping[key]
    for k in defaults:
        if k in mapping:
            return mapping[k]
    if required:
        raise ValueError(f"cannot find the {what} (tried {', '.join(defaults)}); available "
                         f"keys: {available}; name one with {how_to_name}")
    return None
