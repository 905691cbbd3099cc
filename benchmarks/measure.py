"""Time ncollapse.measure against a straightforward implementation and one matmul.

Synthetic float32 features on the CPU: class means m_c (a unit simplex ETF plus 10%
perturbation), features h = m_y + noise (norm ``--sigma``, default 0.3: moderately collapsed;
try 1.5 for an uncollapsed regime where most nearest-mean decisions need the full scores), a
classifier W (means plus noise) and bias b.
For each workload it prints the median wall time of
  ncollapse   : ncollapse.measure(features, labels, weight=W, bias=b), the full metric set
  naive (a)   : one-hot matmul class means, d x d within-class covariance, full pseudo-inverse
                of Sigma_B, NCC by a full distance matrix, all in float64 (defined below)
  matmul (b)  : features @ means.T, one product of the same size
and the ratios naive/ncollapse (target >= 5x on W1, >= 3x on W2) and ncollapse/matmul
(target <= 2.5x on W2); the methods run interleaved, ``--repeats`` times each, medians
reported, and the same ratios of process CPU time (less sensitive to other load on the
machine).

W3 is a language-model vocabulary: C = 50,257 classes in d = 768, N = 100,000 float32
features, Zipf-distributed labels (every class at least once), class means random unit
vectors (C > d: no simplex ETF). Its baseline is one ``features @ weight.T`` (the logits,
in blocks of 4,096 rows whose results are dropped: the whole N x C product would be 20 GB),
its target ncollapse/matmul <= 3x, and it prints the peak memory of ``measure`` above the
inputs (resident set size sampled every 5 ms; target <= 3 GB); no naive baseline (it would
form C x C matrices).
Run: ``python benchmarks/measure.py [--quick] [--repeats R] [--threads T] [--sigma S]
[--only W1,W2,W3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import torch

from ncollapse import measure

WORKLOADS = {"W1": (60_000, 512, 10), "W2": (100_000, 1024, 1000),
             "W3": (100_000, 768, 50_257)}
QUICK = {"W1": (6_000, 128, 10), "W2": (5_000, 128, 100), "W3": (6_000, 64, 2_000)}
ZIPF = ("W3",)  # workloads with Zipf labels and C > d, baseline features @ weight.T


def make_data(n: int, d: int, c: int, sigma: float, seed: int = 0):
    """Synthetic float32 features near collapse, labels, classifier weight and bias.

    Class means: a simplex ETF with unit norms (where trained networks head) plus a 10%
    perturbation; features = mean + isotropic noise of norm about ``sigma``; the classifier
    is the means plus 10% noise. NC1 is about sigma^2 (C-1)/d.
    """
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, c, generator=g, dtype=torch.float64))
    etf = (c / (c - 1)) ** 0.5 * (torch.eye(c, dtype=torch.float64) - 1.0 / c) @ q.T
    means = (etf + 0.1 / d**0.5 * torch.randn(c, d, generator=g, dtype=torch.float64)).float()
    labels = torch.randint(0, c, (n,), generator=g)
    feats = means[labels] + sigma / d**0.5 * torch.randn(n, d, generator=g)
    weight = means + 0.1 / d**0.5 * torch.randn(c, d, generator=g)
    bias = 0.01 * torch.randn(c, generator=g)
    return feats.contiguous(), labels, weight, bias


def make_zipf_data(n: int, d: int, c: int, sigma: float, seed: int = 0, exponent: float = 1.1):
    """Synthetic float32 features for a vocabulary: C random unit class means in R^d,
    Zipf labels (probability of class k proportional to 1/(k+1)^exponent) with every class
    present at least once, features = mean + noise of norm about ``sigma``, classifier =
    means plus 10% noise, no bias."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g)
    means /= means.norm(dim=1, keepdim=True)
    p = 1.0 / torch.arange(1, c + 1, dtype=torch.float64) ** exponent
    drawn = torch.multinomial(p / p.sum(), n - c, replacement=True, generator=g)
    labels = torch.cat([torch.arange(c), drawn])[torch.randperm(n, generator=g)]
    feats = means[labels] + sigma / d**0.5 * torch.randn(n, d, generator=g)
    weight = means + 0.1 / d**0.5 * torch.randn(c, d, generator=g)
    return feats.contiguous(), labels, weight.contiguous(), None


class PeakRSS:
    """Peak resident set size (bytes) above the level at entry, sampled every 5 ms."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def above(self) -> int:
        return self.peak - self.base


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def naive(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: int) -> dict:
    """The straightforward full metric set in float64 (the benchmark's baseline (a))."""
    h = h.double()
    w, b = w.double(), b.double()
    n, d = h.shape
    onehot = torch.nn.functional.one_hot(y, c).double()
    counts = onehot.sum(0)
    means = (onehot.T @ h) / counts[:, None]
    mu_g = h.mean(0)
    mt = means - mu_g
    r = h - means[y]
    sigma_w = r.T @ r / n
    sigma_b = mt.T @ mt / c
    pinv = torch.linalg.pinv(sigma_b, hermitian=True)
    nc1 = torch.trace(sigma_w @ pinv) / c
    out = {"nc1": float(nc1), "trace_ratio": float(torch.trace(sigma_w) / torch.trace(sigma_b))}
    var = (r * r).sum(1) @ onehot / counts
    dm = torch.cdist(means, means) ** 2
    iu = torch.triu_indices(c, c, 1)
    out["cdnv"] = float(((var[iu[0]] + var[iu[1]]) / (2 * dm[iu[0], iu[1]])).mean())
    for name, x in (("means", mt), ("weights", w)):
        norms = x.norm(dim=1)
        cos = (x / norms[:, None]) @ (x / norms[:, None]).T
        pair = cos[iu[0], iu[1]]
        out[f"equinorm_{name}"] = float(norms.std() / norms.mean())
        out[f"equiangular_{name}"] = float(pair.std())
        out[f"maxangle_{name}"] = float((pair + 1 / (c - 1)).abs().mean())
        g = x @ x.T
        target = (torch.eye(c, dtype=g.dtype) - 1 / c) / (c - 1) ** 0.5
        out[f"etf_error_{name}"] = float((g / g.norm() - target).norm())
    out["self_duality"] = float(((w / w.norm() - mt / mt.norm()) ** 2).sum())
    logits = h @ w.T + b
    pred = logits.argmax(1)
    ncc = torch.cdist(h, means).argmin(1)
    out["accuracy"] = float((pred == y).double().mean())
    out["ncc_mismatch"] = float((pred != ncc).double().mean())
    out["bias_collapse"] = float((w @ mu_g + b).norm())
    return out


def timed(fn, args: tuple, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time of ``fn(*args)`` over ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(*args)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _full_set(h, y, w, b):
    return measure(h, y, weight=w, bias=b)


def _one_matmul(h, other):
    return h @ other.T


def _one_matmul_blocked(h, other, rows: int = 4096):
    """``h @ other.T`` in row blocks, each block's result dropped: the same multiply-adds
    without an N x C output (20 GB at W3)."""
    wt = other.T
    for i in range(0, h.shape[0], rows):
        h[i:i + rows] @ wt


def run(quick: bool, repeats: int, sigma: float, threads: int, skip_naive: bool,
        naive_repeats: int = 2, only: tuple[str, ...] | None = None) -> list[dict]:
    """Time the methods on each workload, interleaved, and print one line per workload."""
    torch.set_num_threads(threads)
    rows = []
    for name, (n, d, c) in (QUICK if quick else WORKLOADS).items():
        if only is not None and name not in only:
            continue
        zipf = name in ZIPF
        h, y, w, b = (make_zipf_data if zipf else make_data)(n, d, c, sigma)
        if zipf:
            other = w
        else:
            other = torch.zeros(c, d).index_add_(0, y, h) / torch.bincount(y, minlength=c)[:, None]
        jobs = {"ncollapse": (_full_set, (h, y, w, b)),
                "matmul": (_one_matmul_blocked if zipf else _one_matmul, (h, other))}
        if not skip_naive and not zipf:
            jobs["naive"] = (naive, (h, y, w, b, c))
        res: dict[str, list[tuple[float, float]]] = {k: [] for k in jobs}
        with PeakRSS() as mem:  # the peak memory of measure() above the inputs
            t0, c0 = time.perf_counter(), time.process_time()
            m = _full_set(h, y, w, b)  # warm-up; for W3 (minutes per run) the first timing
            first = (time.perf_counter() - t0, time.process_time() - c0)
        if zipf:
            res["ncollapse"].append(first)
            print(f"{name}: measure {first[0]:.1f} s wall, {first[1]:.1f} s CPU, peak "
                  f"{mem.above / 2**30:.2f} GB above inputs", flush=True)
        for r in range(repeats):  # interleaved, so slow phases of a busy machine hit all three
            for key, (fn, args) in jobs.items():
                if key == "ncollapse" and zipf and r == 0:
                    continue
                if key != "naive" or r < naive_repeats:
                    res[key].append(timed(fn, args, 1))
        med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
               for k, v in res.items()}
        row = {"workload": name, "N": n, "d": d, "C": c, "sigma": sigma, "nc1": m.nc1,
               "threads": threads, "repeats": repeats, "peak_bytes": mem.above,
               **{f"t_{k}": v[0] for k, v in med.items()},
               **{f"cpu_{k}": v[1] for k, v in med.items()}}
        rows.append(row)
        t_nc, t_mm = med["ncollapse"][0], med["matmul"][0]
        line = (f"{name} N={n} d={d} C={c} sigma={sigma:g} nc1={m.nc1:.3g}: "
                f"ncollapse {t_nc:7.3f} s  matmul {t_mm:7.3f} s  ")
        if "naive" in med:
            t_nv = med["naive"][0]
            line += f"naive {t_nv:8.3f} s  naive/ncollapse {t_nv / t_nc:6.2f}x  "
        line += f"ncollapse/matmul {t_nc / t_mm:5.2f}x"
        line += f"  peak {mem.above / 2**30:.2f} GB above inputs"
        cpu_nc, cpu_mm = med["ncollapse"][1], med["matmul"][1]
        line += f"  [CPU time: ncollapse/matmul {cpu_nc / cpu_mm:5.2f}x"
        if "naive" in med:
            line += f", naive/ncollapse {med['naive'][1] / cpu_nc:6.2f}x"
        print(line + "]", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per method (median)")
    ap.add_argument("--sigma", type=float, default=0.3, help="noise norm (class means have norm 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--skip-naive", action="store_true", help="do not time the naive baseline")
    ap.add_argument("--naive-repeats", type=int, default=2, help="timed runs of the (slow) "
                    "naive baseline, in the first rounds")
    ap.add_argument("--only", default=None, help="comma-separated workloads (e.g. W2,W3)")
    args = ap.parse_args(argv)
    only = None if args.only is None else tuple(args.only.split(","))
    run(args.quick, args.repeats, args.sigma, args.threads, args.skip_naive, args.naive_repeats,
        only)


if __name__ == "__main__":
    main()
