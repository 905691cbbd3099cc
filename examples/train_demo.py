"""Train into the terminal phase from Python and print how collapse deepened.

    python examples/train_demo.py [OUT_DIR] [EPOCHS]

Uses the ``demo`` preset (scikit-learn digits, an MLP, CPU). With fewer epochs (e.g. 60) it
finishes in seconds; the full preset (300 epochs) takes about a minute.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ncollapse.config import load_config
from ncollapse.rundir import read_jsonl
from ncollapse.training import run_summary, train


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/train-demo")
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else None
    config = load_config("demo", overrides={"epochs": epochs})
    resume = (out / "config.toml").is_file()  # run it again to continue an interrupted run
    train(config if not resume else None, out=out, resume=resume)

    print(f"{'epoch':>6} {'train err':>9} {'NC1':>9} {'NC2 angle':>9} {'NC3':>9} {'NC4':>7}")
    for row in read_jsonl(out / "metrics.jsonl"):
        m = row["train"]
        print(f"{row['epoch']:6d} {row['train_error']:9.4f} {m['nc1']:9.3g} "
              f"{m['equiangular_means']:9.3g} {m['self_duality']:9.3g} {m['ncc_mismatch']:7.4f}")
    s = run_summary(out)
    print(f"TPT onset: epoch {s['tpt_onset_epoch']}; NC1 {s['nc1_at_onset']:.3g} at onset -> "
          f"{s['nc1']:.3g} at epoch {s['final_epoch']}; test accuracy {s['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
