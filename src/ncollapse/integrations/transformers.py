"""Neural-collapse tracking for the Hugging Face ``Trainer``: ``NeuralCollapseCallback``.

Needs ``pip install 'ncollapse[transformers]'``. For sequence-classification models the
features are the pooled representation the classification head sees (the input of
``classifier``, ``classifier.out_proj`` or ``score``, whichever the model has)::

    from transformers import Trainer
    from ncollapse.integrations.transformers import NeuralCollapseCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    trainer.add_callback(NeuralCollapseCallback(trainer, run_dir="runs/bert"))
    trainer.train()     # logs nc/train/nc1, nc/val/nc1, ... to every report_to logger

At the end of each chosen epoch the model runs in eval mode (modes restored afterwards) over
the training data and, when the trainer has an ``eval_dataset``, the evaluation data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ncollapse.integrations._common import MeasureOptions, Schedule, require
from ncollapse.integrations._tracker import Tracked, Tracker
from ncollapse.metrics import NCMetrics

_tf = require("transformers", "transformers", "ncollapse.integrations.transformers")

__all__ = ["NeuralCollapseCallback", "classification_head", "mean_over_tokens"]

#: Where sequence-classification models keep the Linear that produces the logits.
HEAD_NAMES = ("classifier", "classifier.out_proj", "score", "classifier.dense_out", "out_proj")


def classification_head(model: nn.Module) -> str:
    """The name of the ``nn.Linear`` that produces a sequence classifier's logits."""
    named = dict(model.named_modules())
    for name in HEAD_NAMES:
        if isinstance(named.get(name), nn.Linear):
            return name
    raise ValueError(
        f"cannot find the classification head of {type(model).__name__} (looked for an "
        f"nn.Linear named {', '.join(HEAD_NAMES)}); pass classifier='<module name>'"
    )


def mean_over_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """Hidden states (batch, tokens, hidden) -> (batch, hidden), the mean over the tokens
    (padding included); other shapes are flattened per sample."""
    return hidden.mean(dim=1) if hidden.ndim == 3 else hidden.flatten(1)


class NeuralCollapseCallback(Tracked, _tf.TrainerCallback):
    """Measure neural collapse at the end of chosen epochs of a ``transformers.Trainer``.

    Args:
        trainer: the Trainer; its loggers (``report_to``) and ``log_history`` get the metrics
            as ``nc/train/<name>`` and ``nc/val/<name>``, and its ``eval_dataset`` is the
            validation split. Without it the metrics go to ``state.log_history`` only.
        epochs: 1-based epoch numbers, a predicate, or None for about ``num_measurements``
            log-spaced epochs over ``num_train_epochs`` (always the last).
        val: also measure the trainer's evaluation data.
        classifier, layer, use, max_batches, full_covariance: as in
            :func:`ncollapse.measure_model`; the classifier defaults to the model's
            classification head (:func:`classification_head`), the features to its input.
        layers, pool: more layers to measure as well (e.g. ``"bert.encoder.layer.*"``), each
            output pooled by ``pool`` (default :func:`mean_over_tokens`: hidden states
            (batch, tokens, hidden) averaged over the tokens), logged as
            ``nc/train/layers/<name>/<metric>``.
        label_key: the batch key holding the labels (default: the trainer's first
            ``label_names``, else ``"labels"``).
        run_dir, config, snapshot_size: an optional run directory for ``ncollapse plot``,
            ``animate`` and ``report`` (written by the main process only).
    """

    def __init__(self, trainer: Any = None, *,
                 epochs: Iterable[int] | Callable[[int], bool] | None = None,
                 num_measurements: int = 50, val: bool = True,
                 classifier: nn.Module | str | None = None, layer: nn.Module | str | None = None,
                 use: str | None = None, layers: Sequence[nn.Module | str] | None = None,
                 pool: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
                 max_batches: int | None = None,
                 full_covariance: bool = False, label_key: str | None = None,
                 run_dir: str | Path | None = None, config: Mapping[str, Any] | None = None,
                 snapshot_size: int = 300) -> None:
        self.trainer = trainer
        self.val = val
        self.label_key = label_key
        self.options = MeasureOptions(layer=layer, classifier=classifier, use=use,
                                      layers=layers, pool=mean_over_tokens if pool is None
                                      else pool, max_batches=max_batches,
                                      full_covariance=full_covariance)
        self.tracker = Tracker(self.options, Schedule(epochs, num_measurements),
                               run_dir=run_dir, config=config, snapshot_size=snapshot_size)
        self.last: dict[str, NCMetrics] = {}

    # ------------------------------------------------------------------ events

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        total = getattr(state, "num_train_epochs", None) or math.ceil(args.num_train_epochs)
        self.tracker.start(int(total) if total else None)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        epoch = max(1, round(state.epoch or 0))
        model = kwargs["model"]
        lr = _learning_rate(kwargs.get("optimizer"))
        loss = _last_loss(state.log_history)
        measured = None
        if self.tracker.schedule(epoch):
            if self.options.classifier is None:
                self.options.classifier = classification_head(model)
            key = self._label_key(args)
            split = _LabelSplitter(key)
            loaders = {"train": kwargs["train_dataloader"]}
            if self.val:
                val = self._eval_loader(kwargs.get("eval_dataloader"))
                if val is not None:
                    loaders["val"] = val
            measured = self.tracker.measure(model, loaders, epoch, lr=lr, train_loss=loss,
                                            step=state.global_step, batch_transform=split)
            self.last = measured.splits
            scalars = self.tracker.scalars(measured)
            if self.trainer is not None:
                self.trainer.log(scalars)
            else:
                state.log_history.append({**scalars, "epoch": state.epoch,
                                          "step": state.global_step})
        self.tracker.log_epoch(epoch, lr=lr, train_loss=loss, step=state.global_step,
                               measured=None if measured is None else measured.splits)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tracker.finish()

    # ------------------------------------------------------------------ helpers

    def _label_key(self, args: Any) -> str:
        if self.label_key is not None:
            return self.label_key
        names = getattr(self.trainer, "label_names", None) or getattr(args, "label_names", None)
        return names[0] if names else "labels"

    def _eval_loader(self, given: Iterable[Any] | None) -> Iterable[Any] | None:
        trainer = self.trainer
        if trainer is not None and getattr(trainer, "eval_dataset", None) is not None:
            return trainer.get_eval_dataloader()
        return given


class _LabelSplitter:
    """A Trainer batch (a dict with the labels inside) as ``(inputs without labels, labels)``,
    so the model is called as ``model(**inputs)``."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
        if self.key not in batch:
            raise ValueError(f"the batches have no {self.key!r} key (keys: {sorted(batch)}); "
                             "pass label_key=...")
        return {k: v for k, v in batch.items() if k != self.key}, batch[self.key]


def _learning_rate(optimizer: Any) -> float | None:
    for group in getattr(optimizer, "param_groups", ()):
        return float(group["lr"])
    return None


def _last_loss(history: list[dict[str, Any]]) -> float | None:
    for row in reversed(history):
        if "loss" in row:
            return float(row["loss"])
    return None
