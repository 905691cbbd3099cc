"""ncollapse.integrations.transformers with the real transformers Trainer on CPU (no mocks, no
downloads): a tiny randomly initialised BERT classifier built from a config trains a few steps;
the callback logs nc/train/<metric> and nc/val/<metric> to the Trainer's log history and its
TensorBoard logger, measured on the pooled representation the classification head sees."""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="needs the transformers extra (make setup)")
pytest.importorskip("tensorboard", reason="needs the tensorboard extra (make setup)")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)
from torch.utils.data import DataLoader  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from ncollapse import measure_model  # noqa: E402
from ncollapse.integrations.transformers import (  # noqa: E402
    NeuralCollapseCallback,
    classification_head,
)
from ncollapse.rundir import load_run  # noqa: E402


def _load_example():
    """The dataset of examples/hf_trainer.py (sequences whose tokens come mostly from their
    class's third of the vocabulary), imported from the example itself."""
    path = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer.py"
    spec = importlib.util.spec_from_file_location("ncollapse_example_hf_trainer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_HF = _load_example()
TokenClasses, CLASSES, VOCAB = _HF.TokenClasses, _HF.CLASSES, _HF.VOCAB


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=16,
                        num_labels=CLASSES)
    return BertForSequenceClassification(config)


def test_trainer_logs_metrics_of_the_pooled_representation(tmp_path):
    model = tiny_bert()
    train, val = TokenClasses(96, seed=1), TokenClasses(48, seed=2)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=2,
                             per_device_train_batch_size=16, per_device_eval_batch_size=16,
                             learning_rate=1e-3, logging_steps=2, save_strategy="no",
                             eval_strategy="no", report_to=["tensorboard"], use_cpu=True,
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    nc = NeuralCollapseCallback(trainer, epochs=[1, 2], run_dir=tmp_path / "run",
                                config={"model": "tiny-bert", "epochs": 2})
    trainer.add_callback(nc)
    trainer.train()

    rows = [r for r in trainer.state.log_history if "nc/train/nc1" in r]
    assert [round(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        for key in ("nc/train/nc1", "nc/val/nc1", "nc/train/accuracy", "nc/val/ncc_mismatch"):
            assert math.isfinite(r[key]), key
        assert r["nc/train/num_samples"] == len(train)
        assert r["nc/val/num_samples"] == len(val)
        assert r["nc/train/dim"] == 16  # BERT's pooled output, the head's input
    assert classification_head(model) == "classifier"

    # The numbers are measure_model's on the head's input, in eval mode, for the final weights.
    assert model.training
    loader = DataLoader(train, batch_size=32, collate_fn=_inputs_and_labels)
    ref = measure_model(model, loader, classifier="classifier")
    assert model.training
    for name in ("nc1", "cdnv", "ncc_mismatch", "accuracy", "self_duality"):
        assert rows[-1][f"nc/train/{name}"] == pytest.approx(getattr(ref, name), rel=1e-5,
                                                             abs=1e-9), name

    # The Trainer's TensorBoard logger received them too.
    event_files = sorted((tmp_path / "out").rglob("events.out.tfevents.*"))
    assert event_files
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert any(t.endswith("nc/train/nc1") for t in tags), tags

    run = load_run(tmp_path / "run")
    assert run.state == "finished" and not run.problems
    assert [m["epoch"] for m in run.metrics] == [1, 2]
    assert run.metrics[-1]["train"]["nc1"] == pytest.approx(rows[-1]["nc/train/nc1"])


def _inputs_and_labels(samples: list[dict[str, torch.Tensor]]):
    batch = torch.utils.data.default_collate(samples)
    labels = batch.pop("labels")
    return batch, labels


def test_missing_head_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="classifier='<module name>'"):
        classification_head(model)


def test_without_a_trainer_reference_metrics_go_to_log_history_with_layers(tmp_path):
    model = tiny_bert()
    train = TokenClasses(48, seed=3)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=1,
                             per_device_train_batch_size=16, learning_rate=1e-3,
                             save_strategy="no", eval_strategy="no", report_to="none",
                             use_cpu=True, disable_tqdm=True, seed=0)
    nc = NeuralCollapseCallback(layers=["bert.encoder.layer.*"], val=False)
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[nc])
    trainer.train()
    (row,) = [r for r in trainer.state.log_history if "nc/train/nc1" in r]
    layer_keys = [k for k in row if k.startswith("nc/train/layers/")]
    assert "nc/train/layers/bert.encoder.layer.0/nc1" in layer_keys
    assert not any(k.startswith("nc/val/") for k in row)
    # pool="avg": the encoder layer's output averaged over the sequence, hidden size wide
    assert row["nc/train/layers/bert.encoder.layer.0/dim"] == 16
    assert list(nc.layer_history[0][1]["train"]) == ["bert.encoder.layer.0"]
