"""Argument types that refuse out-of-range values at parse time, naming the allowed range."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["float_in", "int_in"]


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got "
                                             f"{text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}")
        return value
    return parse


def float_in(lo: float, hi: float, *, open_lo: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with ``open_lo``)."""
    left = "(" if open_lo else "["

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {left}{lo:g}, {hi:g}], got "
                                             f"{text!r}") from None
        if not math.isfinite(value) or value > hi or value < lo or (open_lo and value == lo):
            raise argparse.ArgumentTypeError(f"must be in {left}{lo:g}, {hi:g}], got {text}")
        return value
    return parse
