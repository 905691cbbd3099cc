"""``ncollapse measure``: neural-collapse metrics of saved features (.npz / .pt), or a built-in
synthetic example (``--example``)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ncollapse.keys import FEATURE_KEYS, LABEL_KEYS, pick_key

# One line per NCMetrics field: what the number means (definitions: docs/metrics.md).
DESCRIPTIONS: dict[str, str] = {
    "nc1": "NC1: Tr(Σ_W Σ_B^†)/C, within-class spread vs. class separation (0 = collapsed)",
    "nc1_trace_ratio": "NC1 variant: Tr Σ_W / Tr Σ_B",
    "cdnv": "class-distance-normalised variance, mean over class pairs [Gal22]",
    "equinorm_means": "NC2: std/mean of the centred class-mean norms (0 = equal norms)",
    "equinorm_weights": "NC2: std/mean of the classifier row norms",
    "equiangular_means": "NC2: std of pairwise cosines of centred class means",
    "equiangular_weights": "NC2: std of pairwise cosines of classifier rows",
    "maxangle_means": "NC2: mean |cos + 1/(C−1)| of class means (0 = simplex angles)",
    "maxangle_weights": "NC2: mean |cos + 1/(C−1)| of classifier rows",
    "etf_error_means": "NC2: Gram of class means vs. simplex ETF Gram (Frobenius) [Zhu21]",
    "etf_error_weights": "NC2: Gram of classifier vs. simplex ETF Gram [Zhu21]",
    "self_duality": "NC3: ‖W/‖W‖ − M̃/‖M̃‖‖²_F, classifier vs. class means (0..4)",
    "self_duality_etf_error": "NC3 variant: Gram of W M̃ᵀ vs. simplex ETF Gram",
    "ncc_mismatch": "NC4: fraction where the classifier ≠ nearest class mean",
    "accuracy": "fraction of samples the classifier gets right",
    "bias_collapse": "‖W μ_G + b‖: classifier output at the global mean",
    "num_classes": "number of classes C",
    "num_samples": "number of samples N",
    "dim": "feature dimension d",
}

EXAMPLE_NOISE = (1.0, 0.3, 0.1, 0.01, 0.001)


# Library imports happen inside run(): ``ncollapse --help`` imports every command module,
# and torch/matplotlib would make it slow.


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "measure",
        help="neural-collapse metrics of saved features, or of a built-in example",
        description=(
            "Measure neural collapse (NC1-NC4 and variants) of features and labels saved in an "
            ".npz file (numpy.savez) or a .pt file holding a dict of tensors (loaded safely, "
            "weights_only). W and b of the classifier are optional; without them the "
            "classifier metrics are empty. --example measures a synthetic example instead."
        ),
    )
    p.add_argument("file", nargs="?", type=Path, help=".npz or .pt file with features and labels")
    p.add_argument("--features", metavar="KEY", help="key of the (N, d) features "
                   f"(default: first of {', '.join(FEATURE_KEYS)})")
    p.add_argument("--labels", metavar="KEY", help="key of the (N,) integer labels "
                   f"(default: first of {', '.join(LABEL_KEYS)})")
    p.add_argument("--weight", metavar="KEY", help="key of the (C, d) classifier weight "
                   "(default: 'weight' if present)")
    p.add_argument("--bias", metavar="KEY", help="key of the (C,) classifier bias "
                   "(default: 'bias' if present)")
    p.add_argument("--logits", metavar="KEY", help="key of the (N, C) model outputs for NC4 "
                   "and accuracy (default: 'logits' if present)")
    p.add_argument("--num-classes", type=int, metavar="C",
                   help="number of classes (default: from the weight, else max label + 1)")
    p.add_argument("--json", metavar="PATH", dest="json_path",
                   help="also write the metrics as JSON to PATH ('-': JSON on stdout only)")
    p.add_argument("--format", choices=("table", "csv"), default="table", dest="out_format",
                   help="stdout: an aligned table with meanings, or CSV with a header row and "
                        "one row per measurement (empty cell: not measurable) (default: table)")
    g = p.add_argument_group("built-in example")
    g.add_argument("--example", action="store_true",
                   help="measure Gaussian class clusters around a simplex ETF at several noise "
                        "levels, with an ETF classifier")
    g.add_argument("--classes", type=int, default=10, help="example: number of classes")
    g.add_argument("--dim", type=int, default=64, help="example: feature dimension")
    g.add_argument("--per-class", type=int, default=200, help="example: samples per class")
    g.add_argument("--noise", default=",".join(map(str, EXAMPLE_NOISE)),
                   help="example: comma-separated within-class noise levels σ")
    g.add_argument("--seed", type=int, default=0, help="example: random seed")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- loading


def _load_arrays(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        _check_npz_sizes(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except ValueError as exc:  # object arrays need pickle: refused
            raise ValueError(f"{path}: not an .npz archive of plain numeric arrays; reading it "
                             "would need unpickling, which is refused for safety. Save the "
                             "arrays with numpy.savez") from exc
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})"
                             ) from exc
    if suffix in (".pt", ".pth"):
        from ncollapse.io import safe_torch_load

        obj = safe_torch_load(path)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}; "
                             "save it with torch.save({'features': ..., 'labels': ...})")
        for k, v in obj.items():
            if hasattr(v, "layout") and str(v.layout) != "torch.strided":
                raise ValueError(f"{path}: key {k!r} holds a {v.layout} tensor; save dense "
                                 "tensors (tensor.to_dense())")
        return {str(k): v for k, v in obj.items()}
    raise ValueError(f"{path}: unknown file type {suffix!r}; expected .npz or .pt")


def _check_npz_sizes(path: Path) -> None:
    """Refuse members whose header promises more data than the archive holds (before any
    allocation: a 100-byte file must not ask for terabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(fh)
                need = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if not dtype.hasobject and need > info.file_size:
                    raise ValueError(
                        f"{path}: member {info.filename} claims shape {shape} of {dtype} "
                        f"({need} bytes) but holds {info.file_size} bytes; the file is corrupt")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})"
                         ) from exc


# --------------------------------------------------------------------------- output


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.6g}"


def format_table(metrics: dict[str, Any]) -> str:
    """An aligned three-column table: metric, value, what it means."""
    rows = [(k, _fmt(v), DESCRIPTIONS.get(k, "")) for k, v in metrics.items()]
    w0 = max(len("metric"), *(len(r[0]) for r in rows))
    w1 = max(len("value"), *(len(r[1]) for r in rows))
    lines = [f"{'metric':<{w0}}  {'value':>{w1}}  meaning", f"{'-' * w0}  {'-' * w1}  {'-' * 7}"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)


def format_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with a header row (the keys of the first row) and one line per row."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(rows[0]))
    for row in rows:
        writer.writerow(["" if v is None else v for v in row.values()])
    return buf.getvalue()


def _emit(result: Any, table: str, json_path: str | None, csv_rows: list[dict[str, Any]] | None
          = None) -> None:
    if json_path == "-":
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    if csv_rows is not None:
        sys.stdout.write(format_csv(csv_rows))
    else:
        print(table)
    if json_path:
        from ncollapse.io import atomic_write_json

        atomic_write_json(json_path, result)
        print(f"\nwrote {json_path}", file=sys.stderr if csv_rows is not None else sys.stdout)


# --------------------------------------------------------------------------- example


def example_data(noise: float, *, classes: int = 10, dim: int = 64, per_class: int = 200,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Gaussian clusters h = μ_y + σ·z around a unit-norm simplex ETF μ, classifier W = μ, b = 0.

    The means and the noise draw are fixed by ``seed`` (the same z for every σ), so a sweep
    over σ changes nothing but the spread.
    """
    from ncollapse.geometry import simplex_etf

    rng = np.random.default_rng(seed)
    means = simplex_etf(classes, dim, seed=rng)
    labels = np.repeat(np.arange(classes), per_class)
    z = rng.standard_normal((labels.size, dim))
    return {"features": means[labels] + noise * z, "labels": labels, "weight": means.copy(),
            "bias": np.zeros(classes)}


def _run_example(args: argparse.Namespace) -> int:
    from ncollapse.metrics import measure

    try:
        levels = [float(s) for s in str(args.noise).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--noise must be comma-separated numbers, got {args.noise!r}") from None
    if not levels or any(s < 0 for s in levels):
        raise ValueError(f"--noise needs non-negative noise levels, got {args.noise!r}")
    c, d, n = args.classes, args.dim, args.per_class
    if c < 2 or n < 2 or d < c - 1:
        raise ValueError(f"the example needs --classes >= 2, --per-class >= 2 and "
                         f"--dim >= classes - 1; got classes={c}, dim={d}, per-class={n}")
    rows = []
    for sigma in levels:
        data = example_data(sigma, classes=c, dim=d, per_class=n, seed=args.seed)
        m = measure(data["features"], data["labels"], weight=data["weight"],
                    bias=data["bias"], num_classes=c).to_dict()
        # Σ_W ≈ σ²I and Σ_B has C−1 eigenvalues 1/(C−1) (unit ETF): E[NC1] ≈ σ²(C−1)²/C.
        rows.append({"noise": sigma, "expected_nc1": sigma**2 * (c - 1) ** 2 / c, **m})
    cols = ["noise", "nc1", "expected_nc1", "equinorm_means", "equiangular_means",
            "self_duality", "ncc_mismatch", "accuracy"]
    widths = [max(len(k), 11) for k in cols]
    lines = [
        f"Synthetic example: {c} classes, {n} samples each, features in R^{d}: h = μ_y + σ·z, "
        "μ a unit simplex ETF, classifier W = μ, b = 0.",
        "",
        "  ".join(f"{k:>{w}}" for k, w in zip(cols, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    for r in rows:
        lines.append("  ".join(f"{_fmt(r[k]):>{w}}" for k, w in zip(cols, widths, strict=True)))
    lines += [
        "",
        "As σ → 0 the features collapse onto the ETF: NC1 falls like σ² (expected_nc1 = "
        "σ²(C−1)²/C is the small-σ limit;",
        "at large σ the noisy sample means spread further apart and NC1 comes out lower),",
        "the class means become equinorm and equiangular (NC2), the classifier aligns with the "
        "means (NC3, self_duality → 0)",
        "and the classifier agrees with nearest-class-mean decoding (NC4, ncc_mismatch → 0).",
        "Measure your own features with: ncollapse measure FILE.npz (keys features, labels, "
        "optional weight, bias, logits).",
    ]
    result = {"example": {"classes": c, "dim": d, "per_class": n, "seed": args.seed},
              "rows": rows}
    _emit(result, "\n".join(lines), args.json_path,
          rows if args.out_format == "csv" else None)
    return 0


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    if args.example:
        if args.file is not None:
            raise ValueError("give either FILE or --example, not both")
        return _run_example(args)
    if args.file is None:
        raise ValueError("give a .npz or .pt FILE with features and labels, or --example")
    from ncollapse.metrics import measure

    arrays = _load_arrays(args.file)
    features = pick_key(arrays, args.features, FEATURE_KEYS, "features", "--features KEY")
    labels = pick_key(arrays, args.labels, LABEL_KEYS, "labels", "--labels KEY")
    weight = pick_key(arrays, args.weight, ("weight",), "weight", "--weight KEY", required=False)
    bias = pick_key(arrays, args.bias, ("bias",), "bias", "--bias KEY", required=False)
    logits = pick_key(arrays, args.logits, ("logits",), "logits", "--logits KEY", required=False)
    metrics = measure(features, labels, weight=weight, bias=bias, logits=logits,
                      num_classes=args.num_classes).to_dict()
    table = f"{args.file}\n\n{format_table(metrics)}"
    _emit(metrics, table, args.json_path, [metrics] if args.out_format == "csv" else None)
    return 0
