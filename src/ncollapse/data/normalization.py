"""Pixel scaling and standardisation with statistics of the training split."""

from __future__ import annotations

import numpy as np

__all__ = ["channel_stats", "standardize_float32"]


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def standardize_float32(x: np.ndarray, scale: float, norm: tuple[np.ndarray, np.ndarray] | None
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
