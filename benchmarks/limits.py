"""``measure`` at the edges of the supported sizes: C = 131,072 classes, d = 8,192 dimensions.

Each case runs the full metric set (classifier included) once on synthetic float32 data and
prints wall time, peak memory above the inputs (resident set size sampled every 5 ms) and that
peak in units of one float64 ``C x d`` matrix, next to the size one ``C x C`` float64 matrix
would have. Memory is O(C d + batch tile + tile^2): the peak is a small multiple of ``C d``, so
this machine (24 GiB) runs C = 131,072 at small d and d = 8,192 at moderate C, not both at
once (one float64 131,072 x 8,192 matrix alone is 8 GiB, and the state holds two).

Run: ``python benchmarks/limits.py [--threads T] [--only wide,deep] [--quick]`` (``--quick``:
every size divided by 64, a smoke test).
"""

from __future__ import annotations

import argparse
import time

import torch
from measure import PeakRSS, make_zipf_data  # benchmarks/measure.py

from ncollapse import measure

CASES = {
    # name: (N, d, C)
    "wide": (262_144, 64, 131_072),  # vocabulary-sized C >> d: no C x C matrix (128 GiB)
    "deep": (32_768, 8_192, 4_096),  # d = 8,192 > C: spectrum from the C x C Gram matrix
}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--only", default=None, help="comma-separated cases (wide, deep)")
    ap.add_argument("--quick", action="store_true", help="sizes divided by 64 (smoke test)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    only = None if args.only is None else set(args.only.split(","))
    rows = []
    for name, (n, d, c) in CASES.items():
        if only is not None and name not in only:
            continue
        if args.quick:
            n, d, c = n // 64, max(8, d // 64), c // 64
        h, y, w, _ = make_zipf_data(n, d, c, 0.3)
        inputs = (h.numel() + w.numel()) * 4 + y.numel() * 8
        with PeakRSS() as mem:
            t0, c0 = time.perf_counter(), time.process_time()
            m = measure(h, y, weight=w)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        cd, cc = c * d * 8, c * c * 8
        print(f"{name}: N={n} d={d} C={c}  {wall:7.1f} s wall  {cpu:7.1f} s CPU  peak "
              f"{mem.above / 2**30:6.2f} GB above {inputs / 2**30:.2f} GB of inputs "
              f"= {mem.above / cd:4.1f} x one float64 C x d matrix (a C x C one: "
              f"{cc / 2**30:.1f} GB)  nc1={m.nc1:.4g} accuracy={m.accuracy:.4f} "
              f"energy_means={m.hyperspherical_energy_means:.6f}", flush=True)
        rows.append({"case": name, "N": n, "d": d, "C": c, "peak_bytes": mem.above,
                     "wall": wall, "nc1": m.nc1})
    return rows


if __name__ == "__main__":
    main()
