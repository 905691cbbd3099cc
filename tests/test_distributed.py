"""NCAccumulator.sync() across 2 real processes (torch.distributed, gloo on 127.0.0.1).

Each rank holds a different shard (unequal sizes; rank 0 lacks class 3, rank 1 class 2) and runs
pass 1 -> sync -> begin_second_pass -> pass 2 -> sync -> compute. Both ranks must report
exactly what ncollapse.measure reports on the concatenated data (rel. 1e-9, float64), and a
pass-2 update() after compute() must be refused (it would count data twice).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ncollapse import measure

C, D = 4, 6
SIZES = (37, 61)  # rank 0, rank 1

WORKER = r'''
import json, sys, traceback
import numpy as np
import torch
import torch.distributed as dist
from ncollapse import NCAccumulator

rank, out = int(sys.argv[1]), sys.argv[2]
sys.path.insert(0, sys.argv[3])
from test_distributed import make_data, make_model, make_ood, shard

dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[4]}", rank=rank,
                        world_size=2)
try:
    feats, labels, weight, bias = make_data()
    h, y = shard(feats, labels, rank)
    logits = h @ weight.T + bias
    acc = NCAccumulator(num_classes=CLASSES)
    for k in range(0, len(y), 10):  # several batches per rank
        acc.update(torch.from_numpy(h[k:k + 10]), torch.from_numpy(y[k:k + 10]),
                   torch.from_numpy(logits[k:k + 10]))
    acc.update_ood(torch.from_numpy(make_ood()[rank::2]))  # unequal shards of OOD features
    acc.sync()
    acc.begin_second_pass()
    for k in range(0, len(y), 7):
        acc.update(torch.from_numpy(h[k:k + 7]), torch.from_numpy(y[k:k + 7]),
                   torch.from_numpy(logits[k:k + 7]))
    acc.sync()
    result = acc.compute(weight=weight, bias=bias).to_dict()
    # a pass-2 update after compute() (which synced) would count this rank's data twice
    try:
        acc.update(torch.from_numpy(h[:5]), torch.from_numpy(y[:5]))
        result["late_update"] = "accepted"
    except RuntimeError as exc:
        result["late_update"] = str(exc)
    assert acc.compute(weight=weight, bias=bias).to_dict() == {
        k: v for k, v in result.items() if k != "late_update"}
    # measure_model on each rank's shard: rank 0 re-runs the model in pass 2, rank 1 replays
    # its cache; both must report the metrics of the whole data set.
    from torch.utils.data import DataLoader, TensorDataset
    from ncollapse.collect import measure_model
    loader = DataLoader(TensorDataset(torch.from_numpy(h), torch.from_numpy(y)), batch_size=9)
    result["model"] = measure_model(make_model(), loader, cache=rank == 1).to_dict()
except Exception:
    result = {"error": traceback.format_exc()}
with open(out, "w") as fh:
    json.dump(result, fh)
dist.destroy_process_group()
'''.replace("CLASSES", str(C))


def make_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The full data set (float64): features near well-separated means with a large offset."""
    rng = np.random.default_rng(42)
    n = sum(SIZES)
    means = 5 * rng.standard_normal((C, D)) + 100.0
    labels = rng.integers(0, C, n)
    # Rank 0 has no class 3 (its shift must come from rank 1), rank 1 has no class 2.
    head, tail = labels[:SIZES[0]], labels[SIZES[0]:]
    head[head == 3] = 0
    tail[tail == 2] = 1
    feats = means[labels] + 0.3 * rng.standard_normal((n, D))
    weight = rng.standard_normal((C, D))
    bias = rng.standard_normal(C)
    return feats, labels, weight, bias


def make_ood() -> np.ndarray:
    """Out-of-distribution features (float64), offset differently from the classes."""
    return np.random.default_rng(7).standard_normal((9, D)) + 97.0


def make_model() -> torch.nn.Module:
    """The same small float64 network on every rank."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, C)).double()


def shard(feats: np.ndarray, labels: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    sl = slice(0, SIZES[0]) if rank == 0 else slice(SIZES[0], None)
    return feats[sl], labels[sl]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sync_across_two_processes_matches_one_shot(tmp_path: Path) -> None:
    feats, labels, weight, bias = make_data()
    assert 3 not in set(shard(feats, labels, 0)[1].tolist())
    assert set(shard(feats, labels, 1)[1].tolist()) == {0, 1, 3}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / f"rank{r}.json"),
                          str(Path(__file__).parent), port], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=90)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed workers did not finish in 90 s (sync deadlock?)")
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{logs[r]}"
    want = measure(feats, labels, weight=weight, bias=bias, logits=feats @ weight.T + bias,
                   num_classes=C, ood_features=make_ood()).to_dict()
    assert want["ood_orthogonality"] is not None
    model = make_model()
    with torch.no_grad():
        x = torch.from_numpy(feats)
        want_model = measure(model[:-1](x), labels, weight=model[-1].weight,
                             bias=model[-1].bias, logits=model(x), num_classes=C).to_dict()
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert "error" not in got, f"rank {r} failed:\n{got['error']}"
        got_model = got.pop("model")
        late = got.pop("late_update")
        assert "update() after compute() or sync() in pass 2" in late, (
            f"rank {r}: a pass-2 update after compute() under DDP was not refused: {late}")
        for k, v in want_model.items():
            if v is None:
                assert got_model[k] is None, f"rank {r}: measure_model {k}"
            else:
                assert got_model[k] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), (
                    f"rank {r}: distributed measure_model {k} = {got_model[k]!r}, one-shot {v!r}"
                )
        assert got.keys() == want.keys()
        for k, v in want.items():
            if v is None:
                assert got[k] is None, f"rank {r}: {k} should be None after sync, got {got[k]}"
            else:
                assert got[k] is not None, f"rank {r}: {k} missing after sync"
                assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), (
                    f"NCAccumulator.sync() bug: rank {r} {k} = {got[k]!r}, one-shot measure on "
                    f"the concatenated shards = {v!r}"
                )
