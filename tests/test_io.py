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


# ----------------------------------------------------------------------------- non-regular targets


def test_fifo_is_written_in_place_not_replaced(tmp_path):
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    io.atomic_write_text(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_symlink_kept_and_its_target_written(tmp_path):
    target = tmp_path / "real" / "out.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    io.atomic_write_json(link, {"a": 1})
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_dash_writes_to_stdout(capsysbinary):
    io.atomic_write_text("-", "to stdout\n")
    assert capsysbinary.readouterr().out == b"to stdout\n"


def test_directory_target_is_a_clear_error_and_untouched(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        io.atomic_write_text(tmp_path / "d", "y")
    assert (tmp_path / "d" / "keep").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_existing_file_keeps_its_mode(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    path.chmod(0o640)
    io.atomic_write_text(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640
