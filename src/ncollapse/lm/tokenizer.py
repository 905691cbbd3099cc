"""A byte-level byte-pair-encoding tokenizer trained locally on the training text (the
Hugging Face ``tokenizers`` package, optional extra ``ncollapse[lm]``), and the text encoded
as one long array of token ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ncollapse import io as nio

LM_EXTRA = "pip install 'ncollapse[lm]' (the tokenizers package)"


def _tokenizers() -> Any:
    try:  # imported here: tokenizers is the optional extra ncollapse[lm]
        import tokenizers
    except ImportError:
        raise ImportError(f"ncollapse lm needs the tokenizers package: {LM_EXTRA}") from None
    return tokenizers


def train_bpe(lines: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer with ``vocab_size`` tokens, trained on ``lines``."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + merges), got {vocab_size}")
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[], show_progress=False)
    tok.train_from_iterator(lines, trainer)
    return tok


def encode(tok: Any, lines: list[str]) -> np.ndarray:
    """The lines joined by newlines, as int64 token ids."""
    ids: list[int] = []
    for enc in tok.encode_batch([ln + "\n" for ln in lines]):
        ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int64)


def save(tok: Any, path: str | Path) -> None:
    """Write the tokenizer (JSON) atomically."""
    nio.atomic_write_text(path, tok.to_str())


def load(path: str | Path) -> Any:
    """A tokenizer written by :func:`save`."""
    return _tokenizers().Tokenizer.from_file(str(path))
