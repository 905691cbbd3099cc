"""Neural collapse of a language model's last hidden state against the next-token classes,
streamed: the token positions are visited in batches of windows, each batch's features go
through :class:`ncollapse.metrics.NCAccumulator` and are dropped, twice (pass 1: class means;
pass 2: spread around them and nearest-class-mean decisions). Memory stays at one batch of
features plus the accumulator's class tables, however many positions are measured."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ncollapse.lm.model import GPT
from ncollapse.metrics import NCAccumulator, NCMetrics


def num_positions(n_tokens: int, max_positions: int | None = None) -> int:
    """Token positions with a next-token target in a sequence of ``n_tokens`` (capped)."""
    n = max(0, n_tokens - 1)
    return n if max_positions is None else min(n, int(max_positions))


def windows(ids: np.ndarray, block_size: int, batch_windows: int,
            max_positions: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows over ``ids`` (inputs, next-token targets), in
    batches of ``batch_windows`` windows; every position up to ``max_positions`` exactly once
    (the last window may be shorter and comes in a batch of its own)."""
    n = num_positions(len(ids), max_positions)
    full = n // block_size
    src = torch.from_numpy(np.ascontiguousarray(ids[:n + 1], dtype=np.int64))
    for b0 in range(0, full, batch_windows):
        b1 = min(full, b0 + batch_windows)
        chunk = src[b0 * block_size:b1 * block_size + 1]
        yield (chunk[:-1].view(b1 - b0, block_size), chunk[1:].view(b1 - b0, block_size))
    rest = n - full * block_size
    if rest:
        tail = src[full * block_size:n + 1]
        yield tail[:-1].view(1, rest), tail[1:].view(1, rest)


@torch.no_grad()
def hidden_batches(model: GPT, ids: np.ndarray, *, batch_windows: int = 64,
                   max_positions: int | None = None, progress: bool = False, desc: str = ""
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(features (n, d) float32, next-token labels (n,)) per batch of windows, in eval mode."""
    was_training = model.training
    model.eval()
    total = num_positions(len(ids), max_positions)
    bar = tqdm(total=total, desc=desc, unit="tok", unit_scale=True, disable=not progress,
               leave=False)
    try:
        for x, y in windows(ids, model.cfg.block_size, batch_windows, max_positions):
            h = model.hidden(x)
            bar.update(y.numel())
            yield h.reshape(-1, h.shape[-1]), y.reshape(-1)
    finally:
        bar.close()
        model.train(was_training)


@torch.no_grad()
def measure_lm(model: GPT, ids: np.ndarray, *, batch_windows: int = 64,
               max_positions: int | None = None, progress: bool = False,
               desc: str = "measure", spill_dir: str | Path | None = None,
               ood_ids: np.ndarray | None = None) -> NCMetrics:
    """Neural-collapse metrics of the last hidden state over the positions of ``ids``, with
    the LM head (no bias) as the classifier and the vocabulary as the classes.

    Pass 1 folds the features into the class means; pass 2 adds the spread around them and
    compares the LM head's decisions (argmax of its logits) with the nearest class mean.
    Without ``spill_dir`` both passes run the model; with it, pass 1 also appends each batch
    of features to a temporary file there and pass 2 reads them back batch by batch (the same
    numbers, one forward pass fewer; the file is deleted afterwards). ``ood_ids``: a token
    sequence whose hidden states are the out-of-distribution features of
    ``ood_orthogonality`` (every position of it, in pass 1).
    """
    weight = model.lm_head.weight.detach().clone()
    acc = NCAccumulator(num_classes=model.cfg.vocab_size)
    if ood_ids is not None:
        for h, _ in hidden_batches(model, ood_ids, batch_windows=batch_windows):
            acc.update_ood(h)
    batches = hidden_batches(model, ids, batch_windows=batch_windows,
                             max_positions=max_positions, progress=progress,
                             desc=f"{desc} pass 1")
    if spill_dir is None:
        for h, y in batches:
            acc.update(h, y)
        acc.begin_second_pass()
        for h, y in hidden_batches(model, ids, batch_windows=batch_windows,
                                   max_positions=max_positions, progress=progress,
                                   desc=f"{desc} pass 2"):
            acc.update(h, y, logits=h @ weight.T)
        return acc.compute(weight=weight)
    Path(spill_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=spill_dir) as fh:
        shapes: list[tuple[int, int, torch.dtype]] = []
        for h, y in batches:
            acc.update(h, y)
            fh.write(h.contiguous().numpy().tobytes())
            fh.write(y.to(torch.int64).numpy().tobytes())
            shapes.append((h.shape[0], h.shape[1], h.dtype))
        acc.begin_second_pass()
        fh.seek(0)
        bar = tqdm(total=sum(n for n, _, _ in shapes), desc=f"{desc} pass 2", unit="tok",
                   unit_scale=True, disable=not progress, leave=False)
        for n, d, dtype in shapes:
            h = torch.frombuffer(bytearray(fh.read(n * d * dtype.itemsize)), dtype=dtype)
            y = torch.frombuffer(bytearray(fh.read(n * 8)), dtype=torch.int64)
            h = h.view(n, d)
            acc.update(h, y, logits=h @ weight.T)
            bar.update(n)
        bar.close()
    return acc.compute(weight=weight)


@torch.no_grad()
def mean_loss(model: GPT, ids: np.ndarray, *, batch_windows: int = 64,
              max_positions: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) over the positions of ``ids``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in windows(ids, model.cfg.block_size, batch_windows, max_positions):
            logits, _ = model(x)
            total += float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no token positions to evaluate (the split has fewer than 2 tokens)")
    return total / count
