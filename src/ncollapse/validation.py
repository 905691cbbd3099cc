"""Input checks shared by the metrics: NaN/Inf, labels, shapes, absent classes.

Every check raises a ``TypeError`` (wrong kind of object or dtype) or a ``ValueError``
(wrong shape or values) whose message names the problem and says how to fix it.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import numpy as np
import torch

__all__ = [
    "user_stacklevel",
    "as_float64",
    "as_int_labels",
    "as_tensor",
    "check_features",
    "check_labels",
    "check_label_range",
    "check_matrix",
    "check_finite",
    "check_logits",
    "resolve_num_classes",
    "warn_absent_classes",
    "warn_coinciding_means",
    "warn_zero_weights",
    "check_class_count",
    "available_memory",
    "warn_low_dimension",
    "report_nonfinite",
    "require_balanced",
    "require_two_classes",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """Return ``x`` as a torch tensor (numpy arrays share memory; lists are copied)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{name} is a numpy array of Python objects; pass a numeric array")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, (list, tuple)):
        t = torch.as_tensor(np.asarray(x))
    else:
        raise TypeError(
            f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}"
        )
    if device is not None and t.device != device:
        t = t.to(device)
    return t


def report_nonfinite(x: torch.Tensor, name: str, row_offset: int = 0) -> None:
    """Raise a ValueError saying how many entries of ``x`` are NaN/Inf and the first row."""
    bad = ~torch.isfinite(x)
    count = int(bad.sum())
    if count == 0:
        big = float(x.abs().max()) if x.numel() else 0.0
        top = torch.finfo(torch.float64 if x.dtype == torch.float64 else torch.float32).max
        width = x[0].numel() if x.ndim > 1 and x.shape[0] else 1
        if big * big * width < top:  # squares and row sums stay finite: not an overflow
            raise RuntimeError(
                f"a non-finite intermediate result from finite {name} (max |value| {big:.3g}, "
                f"too small to overflow); this is a bug in ncollapse, please report it"
            )
        raise ValueError(
            f"{name} overflow: values are finite but too large for {x.dtype} arithmetic "
            f"(max |value| {big:.3g}); rescale the features or pass float64"
        )
    rows = bad.reshape(bad.shape[0], -1).any(dim=1) if bad.ndim > 1 else bad
    first = int(torch.nonzero(rows)[0, 0]) + row_offset
    n_nan = int(torch.isnan(x).sum())
    raise ValueError(
        f"{name} contains {count} non-finite value(s) ({n_nan} NaN, {count - n_nan} Inf); "
        f"first at row {first}. Remove or repair those rows (e.g. check for a diverged model) "
        f"before measuring."
    )


def check_finite(x: torch.Tensor, name: str, row_offset: int = 0) -> None:
    """Raise a ValueError if ``x`` holds NaN or Inf (how many, first row)."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        report_nonfinite(x, name, row_offset)


def check_features(features: Any, name: str = "features") -> torch.Tensor:
    """Return features as an (N, d) floating tensor; raise on wrong kind, dtype or ndim."""
    h = as_tensor(features, name)
    if not h.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype, got {h.dtype}; "
            f"convert first (e.g. features.float() or features.astype(np.float64))"
        )
    if h.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (N, d), got shape {tuple(h.shape)}; "
            f"flatten per-sample features with features.reshape(len(features), -1)"
        )
    if h.shape[0] == 0 or h.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(h.shape)}); pass at least one sample")
    return h


def check_labels(labels: Any, n: int, device: torch.device) -> torch.Tensor:
    """Return labels as an int64 tensor of length ``n`` on ``device``."""
    y = as_tensor(labels, "labels")
    if y.ndim != 1:
        raise ValueError(
            f"labels must be 1-D with shape (N,), got shape {tuple(y.shape)}; "
            f"pass class indices, not one-hot rows (labels.argmax(1) converts one-hot)"
        )
    if y.shape[0] != n:
        raise ValueError(
            f"length mismatch: {n} feature rows but {y.shape[0]} labels; "
            f"pass exactly one label per feature row"
        )
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"labels must be integers, got dtype {y.dtype}; pass class indices 0..C-1")
    if y.is_floating_point():
        whole = torch.isfinite(y) & (y == torch.round(y))
        if not bool(whole.all()):
            bad = ~whole
            first = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"labels must be integral: {int(bad.sum())} label(s) are not whole numbers, "
                f"first at index {first} (value {float(y[first])}); pass class indices 0..C-1"
            )
    y = y.to(device=device, dtype=torch.int64)
    return y


def check_label_range(y: torch.Tensor, num_classes: int, row_offset: int = 0) -> None:
    """Raise a ValueError if any label is outside [0, num_classes)."""
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        bad = (y < 0) | (y >= num_classes)
        first = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"labels out of range: {int(bad.sum())} label(s) outside [0, {num_classes}), "
            f"first at index {first + row_offset} (value {int(y[first])}); pass "
            f"num_classes=<number of classes> or remap the labels to 0..C-1"
        )


def check_matrix(
    x: Any, name: str, shape: tuple[int | None, ...], hint: str, device: torch.device
) -> torch.Tensor:
    """Return ``x`` as a finite float64 tensor on ``device`` with the given shape (None = any)."""
    t = as_tensor(x, name)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a floating-point array, got dtype {t.dtype}")
    ok = t.ndim == len(shape) and all(
        s is None or s == e for s, e in zip(shape, t.shape, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {want}; {hint}")
    t = t.to(device=device, dtype=torch.float64)
    check_finite(t, name)
    return t


def check_logits(logits: Any, n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Return logits as an (n, num_classes) floating tensor; raise on shape or NaN/Inf."""
    t = as_tensor(logits, "logits", device)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim != 2 or t.shape[0] != n or t.shape[1] != num_classes:
        raise ValueError(
            f"logits has shape {tuple(t.shape)}, expected ({n}, {num_classes}) "
            f"(one row of class scores per sample); pass the classifier outputs for the same batch"
        )
    check_finite(t, "logits")
    return t


def resolve_num_classes(
    num_classes: int | None,
    labels: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    ncc_means: torch.Tensor | None = None,
) -> int:
    """Pick C from num_classes, weight, bias, logits, ncc_means or labels; check agreement."""
    sources: list[tuple[str, int]] = []
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        sources.append(("num_classes", int(num_classes)))
    if weight is not None and weight.ndim == 2:
        sources.append(("weight.shape[0]", int(weight.shape[0])))
    if bias is not None and bias.ndim == 1:
        sources.append(("bias.shape[0]", int(bias.shape[0])))
    if logits is not None and logits.ndim == 2:
        sources.append(("logits.shape[1]", int(logits.shape[1])))
    if ncc_means is not None and ncc_means.ndim == 2:
        sources.append(("ncc_means.shape[0]", int(ncc_means.shape[0])))
    if sources:
        name0, c0 = sources[0]
        for name, c in sources[1:]:
            if c != c0:
                raise ValueError(
                    f"inconsistent number of classes: {name0} = {c0} but {name} = {c}; "
                    f"weight must be (C, d), bias (C,), logits (N, C), ncc_means (C, d)"
                )
        return c0
    if labels is None or labels.numel() == 0:
        raise ValueError(
            "cannot tell the number of classes: pass num_classes=C (or weight/logits)"
        )
    return int(labels.max()) + 1


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the calling function that makes the
    warning point at the first caller outside ncollapse (the user's line), however deep in the
    library the warning is raised."""
    frame = sys._getframe(1)  # the function that will call warnings.warn: level 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
            _PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def warn_absent_classes(counts: torch.Tensor) -> None:
    """Warn once, with their number (not a list: vocabularies have thousands), about classes
    with no samples (the metrics use the present classes)."""
    absent = int((counts == 0).sum())
    if absent:
        warnings.warn(
            f"{absent} of {counts.numel()} classes have no samples and are left out of the "
            f"metrics (measured over the {counts.numel() - absent} present classes; weight rows "
            f"of absent classes are ignored for NC2/NC3)",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def warn_low_dimension(dim: int, num_present: int) -> None:
    """Warn when d < C - 1: Sigma_B has rank at most d, NC1 uses its non-zero spectrum."""
    if dim < num_present - 1:
        warnings.warn(
            f"feature dimension d = {dim} is smaller than C - 1 = {num_present - 1}: the class "
            f"means cannot form a simplex ETF; NC1 uses the pseudo-inverse of Sigma_B over its "
            f"non-zero spectrum (at most d eigenpairs)",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def warn_coinciding_means() -> None:
    """Warn (once per measurement) that the class means coincide: Sigma_B = 0."""
    warnings.warn(
        "class means coincide: between-class scatter is 0, so NC1, the trace ratio, CDNV and "
        "the NC2/NC3 metrics of the means are undefined (nan, hyperspherical energy inf); this "
        "is a result (e.g. dead ReLUs or constant features), not an error",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def warn_zero_weights() -> None:
    """Warn that the classifier rows of the present classes are all zero."""
    warnings.warn(
        "classifier weights are all zero: self_duality, uniform_duality and the NC2 metrics of "
        "the weights are undefined (nan; hyperspherical energy inf)",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes of memory available for new tensors on ``device`` (None when unknown)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    if dev.type != "cpu":
        return None
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found += [int(line.split()[1]) * 1024 for line in f
                      if line.startswith("MemAvailable:")]
    except (OSError, ValueError):
        pass
    try:  # a cgroup (v2) limit, e.g. in a container
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE")))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def class_table_bytes(num_classes: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Estimated bytes of the per-class tables of a measurement: float64 shifts and sums
    (C, d), the pass-2 anchors and projection tables (C, d) in the compute dtype plus a float64
    (C, d) temporary, and about 64 bytes of per-class vectors."""
    item = 8 if dtype == torch.float64 else 4
    return int(num_classes) * (int(dim) * (24 + 2 * item) + 64)


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def check_class_count(num_classes: int, dim: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> None:
    """Refuse, before anything is allocated, a class count whose per-class tables would not
    fit in the memory available on ``device``, with the figure and the fix (one line)."""
    need = class_table_bytes(num_classes, dim, dtype)
    have = available_memory(device)
    if have is not None and need > have:
        raise ValueError(
            f"C = {int(num_classes):,} classes with d = {int(dim)} features need about "
            f"{_gb(need)} for the per-class (C, d) tables, more than the {_gb(have)} of memory "
            f"available on {torch.device(device)}; class ids must be 0..C-1 (map sparse ids with "
            f"np.unique(labels, return_inverse=True)) and num_classes the true number of classes"
        )


def require_two_classes(num_present: int) -> None:
    """Raise if fewer than two classes have samples."""
    if num_present < 2:
        raise ValueError(
            f"need samples from at least 2 classes, got {num_present}; the collapse metrics "
            f"compare classes (check the labels, or measure on a larger subset)"
        )


def as_float64(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """``x`` (numpy array, torch tensor on any device, nested list) as a finite float64 numpy
    array (a copy), optionally required to have ``ndim`` dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name} must be a numeric array or tensor, got {type(x).__name__}"
        ) from exc
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN/Inf entries (first at index {first}); "
            f"remove or repair them first"
        )
    return arr


def as_int_labels(labels: Any, n: int, num_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Labels as an int64 numpy array of length ``n`` with values in [0, C), and C
    (``num_classes``, or the largest label + 1 when it is None); the checks of
    ``check_labels`` and ``check_label_range``."""
    y = check_labels(labels, n, torch.device("cpu"))
    c = resolve_num_classes(num_classes, y)
    check_label_range(y, c)
    return y.numpy(), c


def require_balanced(counts: Any, what: str) -> int:
    """The common per-class count; raise unless every one of C >= 2 classes has it (> 0)."""
    cnt = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts).ravel()
    if cnt.size < 2:
        raise ValueError(f"{what} needs at least 2 classes, got {cnt.size}")
    if cnt.min() == 0 or cnt.min() != cnt.max():
        raise ValueError(
            f"{what} is stated for balanced classes (every class the same number of samples); "
            f"got per-class counts {cnt.tolist()}. Subsample to a balanced set first "
            "(e.g. ncollapse.data's balanced subsets)."
        )
    return int(cnt[0])
