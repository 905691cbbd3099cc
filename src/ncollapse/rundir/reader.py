"""Reading a run directory (config, status, metrics, snapshots) for plots, animations, reports,
the theory lab and resume.

Reading is forgiving: a run that is still going, crashed half way, or lost a file still loads;
whatever is missing or damaged is listed in plain words in :attr:`Run.problems`. Only a path
that is not a run directory at all raises. The format is described in ``docs/architecture.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncollapse.rundir.layout import (
    CONFIG,
    EPOCHS,
    METRICS,
    METRICS_CSV,
    RUN_FILES,
    SNAPSHOT_RE,
    SNAPSHOTS,
    STATUS,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["Run", "load_run", "load_runs", "load_snapshot", "read_jsonl", "read_status",
           "run_summary"]

_SNAPSHOT_RE = SNAPSHOT_RE
_SNAPSHOT_REQUIRED = ("features", "labels", "means")


@dataclass
class Run:
    """Everything readable from one run directory.

    ``metrics`` holds one dict per measurement (the rows of ``metrics.jsonl``, nested as
    written: ``row["train"]["nc1"]``), sorted by epoch; ``epochs`` the per-epoch rows of
    ``epochs.jsonl``; ``snapshots`` maps epoch -> path of its ``.npz``. ``problems`` says, in
    words, what is missing or damaged.
    """

    path: Path
    name: str
    config: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    snapshots: dict[int, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """``"finished"``, ``"running"``, ``"failed"``, or ``"unknown"`` without a status file."""
        if not self.status:
            return "unknown"
        return str(self.status.get("state") or "unknown")

    @property
    def last_epoch(self) -> int | None:
        """The last completed epoch (status, else the last row of metrics or epochs)."""
        if self.status and isinstance(self.status.get("epoch"), int):
            return int(self.status["epoch"])
        candidates = [r.get("epoch") for r in (self.metrics[-1:] + self.epochs[-1:])]
        found = [int(e) for e in candidates if isinstance(e, (int, float))]
        return max(found) if found else None

    @property
    def total_epochs(self) -> int | None:
        """The planned number of epochs (status, else ``[optim] epochs`` in the config)."""
        if self.status and isinstance(self.status.get("epochs"), int):
            return int(self.status["epochs"])
        optim = (self.config or {}).get("optim", {})
        value = optim.get("epochs") if isinstance(optim, Mapping) else None
        return int(value) if isinstance(value, int) else None

    @property
    def tpt_onset(self) -> int | None:
        """First epoch with zero training error (the start of the terminal phase), or None.

        Taken from ``status.json`` when it names one, else found in ``epochs.jsonl`` or, failing
        that, in the measurements.
        """
        if self.status and isinstance(self.status.get("tpt_onset_epoch"), int):
            return int(self.status["tpt_onset_epoch"])
        for rows in (self.epochs, self.metrics):
            for row in rows:
                err = row.get("train_error")
                if isinstance(err, (int, float)) and err == 0 and "epoch" in row:
                    return int(row["epoch"])
        return None

    def describe_state(self) -> str:
        """One line such as ``finished after 200 epochs`` or ``failed at epoch 37 of 200: ...``."""
        last, total = self.last_epoch, self.total_epochs
        of = f" of {total}" if total is not None else ""
        message = (self.status or {}).get("message")
        tail = f": {message}" if message else ""
        if self.state == "finished":
            return f"finished after {last} epochs" if last is not None else "finished"
        if self.state in ("running", "failed"):
            where = f" at epoch {last}{of}" if last is not None else ""
            verb = "still running" if self.state == "running" else "failed"
            return f"{verb}{where}{tail}"
        where = f", last epoch seen {last}{of}" if last is not None else ""
        return f"state unknown (no readable status.json){where}"

    def series(self, key: str, source: str = "metrics") -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, values)`` of a dotted key such as ``"train.nc1"`` or ``"train_loss"``.

        ``source`` is ``"metrics"`` (one value per measurement) or ``"epochs"`` (one per epoch).
        Missing or null values become NaN; rows without an epoch are skipped.
        """
        if source not in ("metrics", "epochs"):
            raise ValueError(f"source must be 'metrics' or 'epochs', got {source!r}")
        rows = self.metrics if source == "metrics" else self.epochs
        xs: list[float] = []
        ys: list[float] = []
        for row in rows:
            epoch = row.get("epoch")
            if not isinstance(epoch, (int, float)):
                continue
            xs.append(float(epoch))
            ys.append(_number(_lookup(row, key)))
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)

    def has_key(self, key: str, source: str = "metrics") -> bool:
        """Whether any row (of ``source``) holds the dotted ``key`` at all, null or not."""
        rows = self.metrics if source == "metrics" else self.epochs
        sentinel = object()
        return any(_lookup(row, key, sentinel) is not sentinel for row in rows)

    def row_at(self, epoch: int | None) -> dict[str, Any] | None:
        """The measurement at ``epoch``, else the first one after it; None if there is none."""
        if epoch is None:
            return None
        later = [r for r in self.metrics if isinstance(r.get("epoch"), (int, float))
                 and r["epoch"] >= epoch]
        return min(later, key=lambda r: r["epoch"]) if later else None

    def value(self, row: Mapping[str, Any] | None, key: str) -> float | None:
        """The finite number at dotted ``key`` in ``row``, else None."""
        if row is None:
            return None
        v = _number(_lookup(row, key))
        return None if math.isnan(v) else v


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read the run directory at ``path``; raises FileNotFoundError if it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: is a file, not a run directory")
    snapshot_dir = path / SNAPSHOTS
    if not any((path / f).exists() for f in RUN_FILES) and not snapshot_dir.is_dir():
        raise FileNotFoundError(
            f"{path}: not a run directory (none of {', '.join(RUN_FILES)} or snapshots/ "
            "found); create one with `ncollapse train --out DIR`"
        )
    run = Run(path=path, name=name or path.resolve().name)
    run.config = _read_config(path / CONFIG, run.problems)
    run.status = _read_status(path / STATUS, run.problems)
    run.metrics = _read_metrics(path, run.problems)
    run.epochs = _read_rows(path / EPOCHS, run.problems, required=False)
    run.snapshots = _find_snapshots(snapshot_dir, run.problems)
    if run.state == "running":
        run.problems.append(f"the run is {run.describe_state()} (figures show it so far)")
    elif run.state == "failed":
        run.problems.append(f"the run {run.describe_state()}")
    return run


def load_runs(paths: Iterable[str | Path | Run], labels: Iterable[str] | None = None
              ) -> list[Run]:
    """Load several runs; names are the labels, else directory names made unique."""
    items = list(paths)
    if not items:
        raise ValueError("no run directories given")
    names = list(labels) if labels is not None else []
    if labels is not None and len(names) != len(items):
        raise ValueError(f"got {len(names)} labels for {len(items)} runs; give one label per run")
    runs = [item if isinstance(item, Run) else load_run(item) for item in items]
    if names:  # renamed copies: Run objects passed in keep their names
        runs = [dataclasses.replace(run, name=str(label))
                for run, label in zip(runs, names, strict=True)]
    elif len({r.name for r in runs}) != len(runs):
        runs = [dataclasses.replace(run) for run in runs]
        _make_names_unique(runs)
    return runs


def load_snapshot(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of one ``snapshots/epoch_XXXXX.npz`` (no pickles); ValueError if damaged."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k]) for k in npz.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: unreadable snapshot ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in _SNAPSHOT_REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{path}: snapshot lacks {', '.join(missing)} "
                         f"(has {', '.join(sorted(data)) or 'nothing'})")
    feats, labels = data["features"], data["labels"]
    if feats.ndim != 2 or labels.ndim != 1 or len(feats) != len(labels):
        raise ValueError(f"{path}: features {feats.shape} and labels {labels.shape} do not match")
    if data["means"].ndim != 2 or data["means"].shape[1] != feats.shape[1]:
        raise ValueError(f"{path}: means {data['means'].shape} do not match features "
                         f"{feats.shape}")
    if "epoch" not in data:
        m = _SNAPSHOT_RE.match(path.name)
        if m:
            data["epoch"] = np.asarray(int(m.group(1)))
    return data


def read_jsonl(path: str | Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per line.

    A last line cut short (a crash while writing) is skipped. Other damaged lines are skipped
    and reported in ``problems`` when a list is given; without one they raise ``ValueError``.
    """
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines()
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad.append(k + 1)
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad.append(k + 1)
    if bad == [len(lines)]:
        if problems is not None:
            problems.append(f"{path.name}: the last line is truncated (the run was interrupted "
                            "while writing); it was skipped")
    elif bad:
        shown = ", ".join(str(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
        if problems is None:
            raise ValueError(f"{path}: {len(bad)} unreadable line(s) (line {shown}); "
                             "not JSON objects")
        problems.append(f"{path.name}: {len(bad)} unreadable line(s) skipped (line {shown})")
    return rows


def read_status(path: str | Path) -> dict[str, Any] | None:
    """The status.json of the run directory ``path`` as a dict; None if missing or unreadable."""
    return _read_status(Path(path) / STATUS, [])


def run_summary(path: str | Path) -> dict[str, Any]:
    """The headline numbers of a run directory: state, TPT onset, NC1 at the onset and at the
    end, the final NC1–NC4 (NC2: equinorm/equiangularity of the means, NC3: self-duality, NC4:
    NCC mismatch), final train error and test accuracy."""
    run = load_run(path)
    status = run.status or {}
    onset = run.tpt_onset
    last = run.metrics[-1] if run.metrics else {}
    train_m = last.get("train") or {}
    at_onset = run.row_at(onset)
    return {
        "run_dir": str(run.path), "state": status.get("state"), "message": status.get("message"),
        "epoch": status.get("epoch"), "epochs": status.get("epochs"),
        "tpt_onset_epoch": onset,
        "nc1_at_onset_epoch": at_onset["epoch"] if at_onset else None,
        "nc1_at_onset": (at_onset.get("train") or {}).get("nc1") if at_onset else None,
        "final_epoch": last.get("epoch"),
        "nc1": train_m.get("nc1"),
        "nc2_equinorm_means": train_m.get("equinorm_means"),
        "nc2_equiangular_means": train_m.get("equiangular_means"),
        "nc2_maxangle_means": train_m.get("maxangle_means"),
        "nc3_self_duality": train_m.get("self_duality"),
        "nc4_ncc_mismatch": train_m.get("ncc_mismatch"),
        "train_error": last.get("train_error"), "test_accuracy": last.get("test_accuracy"),
        "time": last.get("time"),
    }


# ----------------------------------------------------------------------------- internals


def _lookup(row: Mapping[str, Any], key: str, default: Any = None) -> Any:
    if key in row:
        return row[key]
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _read_config(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        problems.append("config.toml is missing: the run's settings are unknown")
        return None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        problems.append(f"config.toml is unreadable ({exc})")
        return None


def _read_status(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        problems.append("status.json is missing: whether the run finished is unknown")
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        problems.append(f"status.json is unreadable ({exc})")
        return None
    if not isinstance(obj, dict):
        problems.append("status.json does not hold a JSON object")
        return None
    return obj


def _read_rows(path: Path, problems: list[str], *, required: bool) -> list[dict[str, Any]]:
    if not path.exists():
        if required:
            problems.append(f"{path.name} is missing")
        return []
    rows = read_jsonl(path, problems)
    rows = [r for r in rows if isinstance(r.get("epoch"), (int, float))]
    rows.sort(key=lambda r: r["epoch"])
    return rows


def _read_metrics(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    jsonl, csv_path = path / METRICS, path / METRICS_CSV
    if jsonl.exists():
        rows = _read_rows(jsonl, problems, required=True)
        if rows:
            return rows
    if csv_path.exists():
        rows = _read_metrics_csv(csv_path, problems)
        if rows:
            if jsonl.exists():
                problems.append("metrics.jsonl holds no measurements; read metrics.csv instead")
            return rows
    if not jsonl.exists() and not csv_path.exists():
        problems.append("metrics.jsonl and metrics.csv are missing: no measurements to plot")
    else:
        problems.append("no measurements recorded yet")
    return []


def _read_metrics_csv(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for flat in csv.DictReader(fh):
                row: dict[str, Any] = {}
                for key, text in flat.items():
                    if key is None:
                        continue
                    _set_dotted(row, key, _parse_cell(text))
                if isinstance(row.get("epoch"), (int, float)):
                    rows.append(row)
    except (csv.Error, UnicodeDecodeError, OSError) as exc:
        problems.append(f"metrics.csv is unreadable ({exc})")
        return []
    rows.sort(key=lambda r: r["epoch"])
    return rows


def _parse_cell(text: str | None) -> Any:
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _set_dotted(row: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = row
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def _find_snapshots(directory: Path, problems: list[str]) -> dict[int, Path]:
    if not directory.is_dir():
        problems.append("snapshots/ is missing: no features to animate")
        return {}
    found: dict[int, Path] = {}
    for p in directory.iterdir():
        m = _SNAPSHOT_RE.match(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    if not found:
        problems.append("snapshots/ holds no epoch_XXXXX.npz files: no features to animate")
    return dict(sorted(found.items()))


def _make_names_unique(runs: list[Run]) -> None:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return
    for run in runs:
        parts = run.path.resolve().parts
        run.name = "/".join(parts[-2:]) if len(parts) >= 2 else str(run.path)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        for k, run in enumerate(runs):
            run.name = f"{run.name} [{k + 1}]"
