"""Track neural collapse of a Hugging Face sequence classifier with NeuralCollapseCallback.

Needs: pip install 'ncollapse[transformers]'
Run: HF_HUB_OFFLINE=1 .venv/bin/python examples/hf_trainer.py --out runs/hf
(a minute or two on a CPU)
A tiny BERT built from a config (random weights, nothing downloaded) learns which third of the
vocabulary a sequence's tokens come from. The features are the pooled representation that the
classification head sees; the metrics reach every `report_to` logger and `log_history`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from ncollapse.integrations.transformers import NeuralCollapseCallback

CLASSES, LENGTH, VOCAB = 3, 8, 60


class TokenClasses(Dataset):
    """Sequences whose tokens come mostly (80 %) from their class's third of the vocabulary."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % CLASSES
        own = self.labels[:, None] * (VOCAB // CLASSES) + torch.randint(
            1, VOCAB // CLASSES, (n, LENGTH), generator=g)
        noise = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
        self.ids = torch.where(torch.rand(n, LENGTH, generator=g) < 0.8, own, noise)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(LENGTH, dtype=torch.long),
                "labels": self.labels[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hf"))
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=CLASSES))
    training_args = TrainingArguments(
        output_dir=str(args.out / "trainer"), num_train_epochs=args.epochs,
        per_device_train_batch_size=16, learning_rate=2e-3, logging_steps=10,
        save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=training_args, train_dataset=TokenClasses(192, 1),
                      eval_dataset=TokenClasses(96, 2))
    nc = NeuralCollapseCallback(trainer, num_measurements=6, run_dir=args.out / "run",
                                config={"model": "bert (tiny, random init)",
                                        "epochs": args.epochs})
    trainer.add_callback(nc)
    trainer.remove_callback(PrinterCallback)  # keep the console short: we print below
    trainer.train()
    for row in trainer.state.log_history:
        if "nc/train/nc1" in row:
            print(f"epoch {row['epoch']:4.1f}: NC1 {row['nc/train/nc1']:.3g}  "
                  f"NC4 {row['nc/train/ncc_mismatch']:.3g}  "
                  f"val accuracy {row['nc/val/accuracy']:.3f}")
    print(f"run directory: {args.out / 'run'}")


if __name__ == "__main__":
    main()
