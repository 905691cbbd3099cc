"""Atomic writes and safe loads."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from ncollapse import io
from ncollapse.rundir import read_jsonl


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "out.json"
    io.atomic_write_json(path, {"a": 1})
    io.atomic_write_json(path, {"b": [1.5, float("nan"), float("inf")]})
    assert json.loads(path.read_text()) == {"b": [1.5, None, None]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_atomic_write_uses_umask_permissions(tmp_path):
    path = tmp_path / "f.txt"
    io.atomic_write_text(path, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    io.atomic_write_text(path, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_jsonl_roundtrip_and_truncated_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"epoch": 1, "x": 0.5}, {"epoch": 2, "x": None}]
    io.atomic_write_jsonl(path, rows)
    assert read_jsonl(path) == rows
    with open(path, "a") as fh:
        fh.write('{"epoch": 3, "x"')  # a crash mid-append
    assert read_jsonl(path) == rows
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_torch_roundtrip_and_pickle_rejected(tmp_path):
    good = tmp_path / "good.pt"
    io.atomic_torch_save({"w": torch.arange(3.0), "epoch": 4, "names": ["a"]}, good)
    loaded = io.safe_torch_load(good)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["epoch"] == 4

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        io.safe_torch_load(bad)
    with pytest.raises(FileNotFoundError):
        io.safe_torch_load(tmp_path / "missing.pt")
