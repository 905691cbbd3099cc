"""The English text corpus of ``ncollapse lm``: the King James Bible as the Debian package
``bible-kjv`` prints it (``bible -f "Gen1:1-Rev22:21"``, one verse a line with its reference,
about 820,000 words, public domain), split into training and validation verses.

Nothing is downloaded: the text comes from the installed package (``apt-get install bible-kjv
bible-kjv-text``), or from a plain UTF-8 text file given instead.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

KJV_PACKAGES = "bible-kjv bible-kjv-text"
KJV_RANGE = "Gen1:1-Rev22:21"
KJV_VERSES = 31102


def kjv_lines() -> list[str]:
    """Every verse of the King James Bible, one line each ("Ge1:1 In the beginning ...")."""
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError(
            f"the King James Bible corpus needs the Debian packages {KJV_PACKAGES} "
            f"(apt-get install {KJV_PACKAGES}, or make setup), or pass --text FILE")
    out = subprocess.run([exe, "-f", KJV_RANGE], capture_output=True, check=False,
                         stdin=subprocess.DEVNULL)
    lines = [ln for ln in out.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
    if out.returncode != 0 or len(lines) < KJV_VERSES:
        raise FileNotFoundError(
            f"'bible -f {KJV_RANGE}' printed {len(lines)} of {KJV_VERSES} verses (exit "
            f"{out.returncode}); reinstall the Debian packages {KJV_PACKAGES}")
    return lines


def text_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file (a corpus of one's own)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path}: needs at least 2 non-empty lines of text, has {len(lines)}")
    return lines


def split_lines(lines: list[str], val_fraction: float, block: int = 100
                ) -> tuple[list[str], list[str]]:
    """Training and validation lines: every k-th run of ``block`` consecutive lines goes to
    validation (k = round(1/val_fraction)), so both splits span the whole text."""
    if not 0.0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    every = max(2, round(1.0 / val_fraction))
    block = max(1, min(block, len(lines) // (8 * every)))  # at least ~8 validation runs
    train: list[str] = []
    val: list[str] = []
    for k in range(0, len(lines), block):
        (val if (k // block) % every == every - 1 else train).extend(lines[k:k + block])
    if not val:
        val, train = train[-block:], train[:-block]
    return train, val
