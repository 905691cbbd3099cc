"""Neural collapse in a small language model: the King James Bible (Debian ``bible-kjv``), a
byte-pair tokenizer trained locally, a GPT-style decoder in plain torch, and the collapse of
its last hidden state against the next-token classes, streamed over the training positions at
several steps of training. Used by ``ncollapse lm``; needs the extra ``ncollapse[lm]``."""

from ncollapse.lm.measure import hidden_batches, mean_loss, measure_lm
from ncollapse.lm.model import GPT, GPTConfig
from ncollapse.lm.train import LMConfig, run_lm

__all__ = ["GPT", "GPTConfig", "LMConfig", "hidden_batches", "mean_loss", "measure_lm",
           "run_lm"]
