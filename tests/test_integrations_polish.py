"""Issue 11 item 6: what a new user hits on the command line and in warnings.

Every flag of ``ncollapse train --help`` has help text and says its default; ``ncollapse plot
--label a b RUN RUN`` keeps the run directories; ``ncollapse measure ... | head`` ends quietly;
``measure --format csv``; a missing data set names the CLI flags; the run summary never prints
"None"; library warnings point at the caller's line.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import write_run
from torch.utils.data import DataLoader, TensorDataset

import ncollapse
from ncollapse.cli import build_parser, main


def subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_train_help_gives_every_flag_help_text_and_its_default():
    missing = []
    for action in subparser("train")._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0] if action.option_strings else action.dest
        if not action.help or "default" not in action.help:
            missing.append(flag)
    assert not missing, f"flags without help text naming the default: {missing}"


def test_plot_label_before_the_run_dirs_keeps_them(tmp_path, capsys):
    a = write_run(tmp_path / "a", epochs=12, measurements=4, snapshots=False).path
    b = write_run(tmp_path / "b", epochs=12, measurements=4, snapshots=False, seed=1).path
    out = tmp_path / "figs"
    assert main(["plot", "--label", "first", "second", str(a), str(b), "--out", str(out),
                 "--format", "png"]) == 0
    assert (out / "overview.png").is_file()
    assert main(["plot", str(a), str(b), "--label", "first", "second", "--out", str(out),
                 "--format", "png"]) == 0
    assert main(["plot", "--label", "only-one", str(a), str(b), "--out", str(out)]) == 2
    assert "one name per run" in capsys.readouterr().err


def _measure_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ncollapse.cli", "measure", *args]


def test_measure_into_a_closed_pipe_ends_quietly():
    proc = subprocess.Popen(_measure_cmd("--example", "--per-class", "20"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` having exited before the table is printed
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()[-2000:]
    assert err.strip() == b""


def test_measure_format_csv(tmp_path):
    out = subprocess.run(_measure_cmd("--example", "--per-class", "20", "--noise", "1,0.1",
                                      "--format", "csv"),
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [float(r["noise"]) for r in rows] == [1.0, 0.1]
    assert float(rows[1]["nc1"]) < float(rows[0]["nc1"])
    assert set(ncollapse.NCMetrics.field_names()) <= set(rows[0])


def test_missing_dataset_error_names_the_cli_flags(tmp_path, capsys):
    code = main(["train", "--dataset", "mnist", "--root", str(tmp_path), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--root" in err and "--download" in err, err


def test_run_summary_without_an_onset_prints_no_none(tmp_path, capsys):
    code = main(["train", "--dataset", "digits", "--per-class", "10", "--width", "8",
                 "--depth", "1", "--epochs", "1", "--lr", "1e-4", "--num-measurements", "1",
                 "--snapshot-per-class", "0", "--no-progress", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0
    assert "None" not in out, out
    assert "TPT onset: not reached" in out, out


def test_library_warnings_point_at_the_callers_line():
    h = torch.randn(40, 6, dtype=torch.float64)
    y = torch.arange(40) % 3
    y[y == 1] = 0  # class 1 absent: a warning
    loader = DataLoader(TensorDataset(h.float(), y), batch_size=16)
    model = torch.nn.Sequential(torch.nn.Linear(6, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ncollapse.measure(h, y, num_classes=3)
        ncollapse.measure_model(model, loader)
        ncollapse.measure(torch.randn(20, 2), torch.arange(20) % 5)  # d < C - 1
    assert len(caught) >= 3
    assert {w.filename for w in caught} == {__file__}, [(w.filename, w.lineno) for w in caught]


ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(str(p.relative_to(ROOT)) for p in [ROOT / "README.md", *ROOT.glob("docs/**/*.md")])


@pytest.mark.parametrize("doc", DOCS)
def test_doc_links_stay_inside_the_repository(doc):
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc} links outside the repository: {target}"
        assert resolved.exists(), f"{doc} links to a missing file: {target}"
