"""Datasets that need no files: scikit-learn's 8×8 digits and a Gaussian mixture on an ETF."""

from __future__ import annotations

import functools

import numpy as np

from ncollapse.data.dataset import SPLITS, Splits, check_choice
from ncollapse.geometry import simplex_etf

__all__ = ["DIGITS_SPLIT_SEED", "gaussian_splits", "load_digits", "make_gaussian"]

DIGITS_SPLIT_SEED = 20240  # fixed: the digits split never depends on the run seed


@functools.lru_cache(maxsize=1)
def _digits_split() -> Splits:
    """The fixed digits split, read from scikit-learn once per process."""
    # scikit-learn takes about a second to import and only this dataset needs it
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.uint8).reshape(-1, 1, 8, 8)  # integer values 0..16
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def load_digits() -> Splits:
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
    check_choice("split", split, SPLITS)
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


def gaussian_splits(per_class: int | None, seed: int | None, *, num_classes: int = 10,
                     dim: int = 32, separation: float = 4.0, noise: float = 1.0,
                     test_per_class: int | None = None) -> tuple[Splits, list[str]]:
    n_train = 100 if per_class is None else per_class
    n_test = n_train if test_per_class is None else test_per_class
    seed = 0 if seed is None else int(seed)
    kw = dict(num_classes=num_classes, dim=dim, separation=separation, noise=noise, seed=seed)
    x_tr, y_tr, _ = make_gaussian(per_class=n_train, split="train", **kw)
    x_te, y_te, _ = make_gaussian(per_class=n_test, split="test", **kw)
    return ({"train": (x_tr, y_tr), "test": (x_te, y_te)},
            [f"class {c}" for c in range(num_classes)])
