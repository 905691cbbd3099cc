"""``ncollapse measure``: .npz/.pt input, table and JSON output, safe loading, key errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ncollapse import measure
from ncollapse.cli import main
from ncollapse.commands.measure import example_data

CONSOLE = Path(sys.executable).parent / "ncollapse"


def _data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    c, d, n = 4, 7, 30
    means = rng.standard_normal((c, d)) * 3
    labels = rng.integers(0, c, n)
    labels[:c] = np.arange(c)
    feats = means[labels] + 0.5 * rng.standard_normal((n, d))
    weight = means + 0.1 * rng.standard_normal((c, d))
    bias = 0.1 * rng.standard_normal(c)
    return {"features": feats, "labels": labels, "weight": weight, "bias": bias}


def _expected(data: dict[str, np.ndarray], **kw: object) -> dict[str, object]:
    return measure(data["features"], data["labels"], weight=data.get("weight"),
                   bias=data.get("bias"), **kw).to_dict()  # type: ignore[arg-type]


def _same(got: dict[str, object], want: dict[str, object]) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        if v is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-300), k


def test_npz_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data()
    path = tmp_path / "feats.npz"
    np.savez(path, **data)
    out_json = tmp_path / "out" / "m.json"
    assert main(["measure", str(path), "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    want = _expected(data)
    for key in want:
        assert key in table
    assert f"{want['nc1']:.6g}" in table
    _same(json.loads(out_json.read_text()), want)


def test_json_to_stdout_and_custom_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    data = _data(1)
    path = tmp_path / "x.npz"
    np.savez(path, H=data["features"].astype(np.float32), y=data["labels"],
             W=data["weight"])
    assert main(["measure", str(path), "--features", "H", "--labels", "y", "--weight", "W",
                 "--num-classes", "4", "--json", "-"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = measure(data["features"].astype(np.float32), data["labels"],
                   weight=data["weight"], num_classes=4).to_dict()
    _same(got, want)


def test_pt_input_with_logits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _data(2)
    logits = data["features"] @ data["weight"].T + data["bias"]
    path = tmp_path / "f.pt"
    torch.save({k: torch.from_numpy(v) for k, v in data.items()} | {"logits":
               torch.from_numpy(logits)}, path)
    assert main(["measure", str(path), "--json", "-"]) == 0
    _same(json.loads(capsys.readouterr().out), _expected(data, logits=logits))


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"features": torch.zeros(3, 2), "labels": torch.zeros(3), "x": _Evil()}, path)
    assert main(["measure", str(path)]) == 2
    err = capsys.readouterr()
    assert "cannot be loaded safely" in err.err
    assert "pwned" not in err.out
    # The same for a raw pickle file with a .pt suffix.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil()))
    assert main(["measure", str(raw)]) == 2
    assert "cannot be loaded safely" in capsys.readouterr().err


def test_missing_key_lists_available(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k.npz"
    np.savez(path, emb=np.zeros((4, 2)), target=np.arange(4))
    assert main(["measure", str(path)]) == 2
    err = capsys.readouterr().err
    assert "available keys: emb, target" in err and "--features" in err
    assert main(["measure", str(path), "--features", "emb", "--labels", "nope"]) == 2
    assert "no key 'nope'" in capsys.readouterr().err


def test_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", str(tmp_path / "missing.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    txt = tmp_path / "a.txt"
    txt.write_text("x")
    assert main(["measure", str(txt)]) == 2
    assert "expected .npz or .pt" in capsys.readouterr().err
    obj = tmp_path / "obj.npz"
    np.savez(obj, features=np.array([{"a": 1}], dtype=object), labels=np.zeros(1))
    assert main(["measure", str(obj)]) == 2
    assert "unpickling, which is refused" in capsys.readouterr().err
    broken = tmp_path / "broken.npz"
    np.savez(broken, features=np.zeros((3, 2)), labels=np.zeros(3, dtype=int))
    broken.write_bytes(broken.read_bytes()[:-40])  # truncated download
    assert main(["measure", str(broken)]) == 2
    assert "broken.npz" in capsys.readouterr().err
    assert main(["measure"]) == 2
    assert "--example" in capsys.readouterr().err


def test_example_json_matches_measure(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    out = tmp_path / "ex.json"
    assert main(["measure", "--example", "--classes", "5", "--dim", "8", "--per-class", "40",
                 "--noise", "0.5,0.01", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "expected_nc1" in text and "ncc_mismatch" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["noise"] for r in rows] == [0.5, 0.01]
    for r in rows:
        data = example_data(r["noise"], classes=5, dim=8, per_class=40, seed=0)
        want = _expected(data, num_classes=5)
        _same({k: r[k] for k in want}, want)
        assert r["expected_nc1"] == pytest.approx(r["noise"] ** 2 * 16 / 5)
    # Collapse deepens as the noise shrinks; NC1 follows σ² within sampling error.
    assert rows[1]["nc1"] < rows[0]["nc1"] * 1e-2
    for r in rows:
        assert r["nc1"] == pytest.approx(r["expected_nc1"], rel=0.5)


def test_console_script(tmp_path: Path) -> None:
    data = _data(3)
    path = tmp_path / "c.npz"
    np.savez(path, **data)
    assert CONSOLE.exists(), f"console script missing at {CONSOLE}"
    res = subprocess.run([str(CONSOLE), "measure", str(path), "--json", "-"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    _same(json.loads(res.stdout), _expected(data))


def test_sparse_tensor_and_lying_npz_header_are_one_line_errors(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    i = torch.tensor([[0, 1], [1, 0]])
    sparse = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0]), (2, 2))
    torch.save({"features": sparse, "labels": torch.tensor([0, 1])}, tmp_path / "s.pt")
    assert main(["measure", str(tmp_path / "s.pt")]) == 2
    assert "key 'features' holds a torch.sparse_coo tensor" in capsys.readouterr().err
    # an .npz whose header promises 10**12 rows: refused before numpy allocates anything
    np.savez(tmp_path / "ok.npz", features=np.zeros((4, 2)), labels=np.arange(4) % 2)
    with zipfile.ZipFile(tmp_path / "ok.npz") as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["features.npy"] = members["features.npy"].replace(b"(4, 2)", b"(1000000000000, 2)")
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    assert main(["measure", str(tmp_path / "huge.npz")]) == 2
    err = capsys.readouterr().err
    assert "claims shape (1000000000000, 2)" in err and err.count("\n") == 1
