"""Layer-peeled model [Fan21]: balanced closed form, convex SDP cross-check, minority collapse."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import logsumexp

import ncollapse
from ncollapse.cli import main
from ncollapse.geometry import canonical_etf, random_orthonormal
from ncollapse.theory import layer_peeled as lp


def _ce(w, h, labels):
    z = h @ w.T
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def _constraints(problem, w, h, labels):
    counts = np.asarray(problem.counts)
    c = problem.classes
    e_w = np.sum(w * w) / c
    e_h = np.sum(np.sum(h * h, axis=1) / counts[labels]) / c
    return e_w, e_h


@pytest.mark.parametrize("c,d", [(4, 3), (4, 4), (5, 9)])
def test_balanced_closed_form_value_is_the_etf(c, d):
    """The closed-form value is the CE of an explicit (rotated) ETF with the full budgets."""
    e_w, e_h, n = 1.7, 0.6, 3
    q = random_orthonormal(d, d, seed=1)
    w = canonical_etf(c, d, scale=math.sqrt(e_w)) @ q
    h = np.repeat(w * math.sqrt(e_h / e_w), n, axis=0)
    labels = np.repeat(np.arange(c), n)
    assert _ce(w, h, labels) == pytest.approx(lp.balanced_closed_form(c, e_w, e_h), abs=1e-14)


@pytest.mark.parametrize("c,d,e_w,e_h", [(4, 3, 1.0, 1.0), (4, 8, 2.0, 0.5), (5, 10, 3.0, 3.0)])
def test_balanced_solver_matches_closed_form(c, d, e_w, e_h):
    p = lp.LayerPeeledProblem(counts=(3,) * c, dim=d, energy_w=e_w, energy_h=e_h)
    sol = lp.solve(p, per_sample=True, seeds=(0, 1))
    cf = lp.balanced_closed_form(c, e_w, e_h)
    assert abs(sol.objective - cf) < 1e-9
    assert sol.kkt_residual < 1e-7
    assert abs(_ce(sol.weight, sol.features, sol.labels) - cf) < 1e-9
    ew, eh = _constraints(p, sol.weight, sol.features, sol.labels)
    assert ew == pytest.approx(e_w, rel=1e-12) and eh == pytest.approx(e_h, rel=1e-12)
    m = ncollapse.measure(sol.features, sol.labels, weight=sol.weight)
    assert m.nc1 < 1e-10 and m.etf_error_weights < 1e-6 and m.etf_error_means < 1e-6
    assert m.self_duality < 1e-10
    norms = np.linalg.norm(sol.weight, axis=1)
    np.testing.assert_allclose(norms, math.sqrt(e_w), rtol=1e-6)
    if 2 * c <= d:  # the SDP is an exact reformulation
        assert abs(lp.solve_sdp(p).objective - cf) < 1e-6


def test_class_mean_reduction_is_exact():
    """Per-sample and class-mean (π_c-weighted) problems have the same optimum (Jensen)."""
    p = lp.LayerPeeledProblem.imbalanced(majority=2, minority=2, ratio=4, minority_count=2,
                                         dim=8, energy_w=2.0, energy_h=2.0)
    full = lp.solve(p, per_sample=True, seeds=(0, 1))
    means = lp.solve(p, per_sample=False, seeds=(0, 1))
    assert abs(full.objective - means.objective) < 1e-9
    assert full.kkt_residual < 1e-7 and means.kkt_residual < 1e-7
    m = ncollapse.measure(full.features, full.labels, weight=full.weight)
    assert m.nc1 < 1e-10


def test_imbalanced_minority_collapse_and_sdp():
    ratios = np.geomspace(1.0, 300.0, 7)
    rows = lp.sweep_ratio(majority=3, minority=3, dim=12, energy_w=2.0, energy_h=2.0,
                          ratios=ratios, seeds=(0, 1), sdp=True)
    cos = np.array([r["minority_cosine"] for r in rows])
    assert cos[0] == pytest.approx(-1.0 / 5, abs=1e-6)  # R = 1: the ETF
    assert np.all(np.diff(cos) > -1e-6)  # increasing in R
    assert cos[-1] > 1 - 1e-6  # minority collapse
    for r in rows:
        assert abs(r["objective"] - r["sdp_objective"]) < 1e-6  # d >= 2C: exact
        assert abs(r["minority_cosine"] - r["sdp_minority_cosine"]) < 1e-3
        assert r["kkt_residual"] < 1e-7
    norms = [r["minority_norm_ratio"] for r in rows]
    assert norms[0] == pytest.approx(1.0, abs=1e-6) and norms[-1] < norms[0]


def test_minority_cosine_edge_cases():
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    assert lp.minority_cosine(w, [2, 3]) == pytest.approx(1.0, abs=1e-15)
    assert lp.minority_cosine(w, [0, 1, 2]) == pytest.approx(
        np.mean([0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]), abs=1e-15)
    w[3] = 0.0
    assert math.isnan(lp.minority_cosine(w, [2, 3]))
    with pytest.raises(ValueError, match="at least 2 minority"):
        lp.minority_cosine(w, [1])


def test_problem_validation():
    with pytest.raises(ValueError, match="R = n_A/n_B must be >= 1"):
        lp.LayerPeeledProblem.imbalanced(majority=2, minority=2, ratio=0.5, dim=4)
    with pytest.raises(ValueError, match="energy_w"):
        lp.LayerPeeledProblem(counts=(1, 1), dim=2, energy_w=0.0)
    p = lp.LayerPeeledProblem.imbalanced(majority=2, minority=2, ratio=2.5, dim=4)
    with pytest.raises(ValueError, match="integer class counts"):
        p.labels()


def _cli(tmp_path, *argv):
    """Run ``ncollapse theory layer-peeled ARGV`` through the CLI; the JSON (None on error)."""
    path = tmp_path / "r.json"
    path.unlink(missing_ok=True)
    code = main(["theory", "layer-peeled", *argv, "--out", str(tmp_path), "--json", str(path)])
    return json.loads(path.read_text()) if code == 0 else None


def test_cli_balanced_json_and_figure(tmp_path):
    out = _cli(tmp_path, "--classes", "4", "--per-class", "2", "--dim", "8",
               "--sweep-points", "4", "--max-ratio", "100", "--sweep-energies", "2,2",
               "--restarts", "1", "--threshold-rtol", "0")
    assert abs(out["objective"] - out["closed_form_objective"]) < 1e-9
    assert abs(out["sdp_objective"] - out["closed_form_objective"]) < 1e-6
    assert out["metrics"]["etf_error_weights"] < 1e-6
    assert len(out["sweep"]["2,2"]) == 4 and out["thresholds"] == {}
    png = tmp_path / "theory-layer-peeled.png"
    assert png.exists() and png.stat().st_size < 200_000


def test_cli_imbalanced_and_flags(tmp_path, capsys):
    out = _cli(tmp_path, "--classes", "4", "--per-class", "1", "--dim", "8", "--ratio", "50",
               "--energy-w", "2", "--energy-h", "2", "--no-figures", "--restarts", "1",
               "--sweep-points", "0")
    assert out["closed_form_objective"] is None
    assert abs(out["objective"] - out["sdp_objective"]) < 1e-6
    assert out["minority_cosine"] > 0.99
    capsys.readouterr()
    assert _cli(tmp_path, "--lambda-w", "0.1", "--no-figures") is None
    assert "norm budgets" in capsys.readouterr().err


# --------------------------------------------------------------------------- thresholds


def _sdp_minority(majority, minority, ratio, energy):
    """Independent check: Fang et al.'s convex program on the Gram matrix, solved in the test.

    Returns (mean pairwise cosine of the minority classifiers, minority/majority ratio of the
    mean squared classifier norms)."""
    import cvxpy as cp

    c = majority + minority
    counts = np.array([ratio] * majority + [1.0] * minority)
    pi = counts / counts.sum()
    z = cp.Variable((2 * c, 2 * c), PSD=True)
    loss = sum(pi[k] * (cp.log_sum_exp(z[c:, k]) - z[c + k, k]) for k in range(c))
    prob = cp.Problem(cp.Minimize(loss), [cp.trace(z[:c, :c]) <= c * energy,
                                          cp.trace(z[c:, c:]) <= c * energy])
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    g = z.value[c:, c:]
    sq = np.diag(g)
    idx = np.arange(majority, c)
    cos = g[np.ix_(idx, idx)] / np.sqrt(np.outer(sq[idx], sq[idx]))
    mean_cos = cos[~np.eye(minority, dtype=bool)].mean()
    return float(mean_cos), float(sq[idx].mean() / sq[:majority].mean())


def test_collapse_threshold_is_bracketed():
    th = lp.collapse_threshold(majority=3, minority=3, dim=12, energy_w=2.0, energy_h=2.0,
                               ratio_max=1e3, rtol=0.02)
    lo, hi = th["bracket"]
    assert 1 < lo < hi <= lo * 1.02
    assert th["cosine_lo"] < 1 - 1e-6 <= th["cosine_hi"]
    assert th["vanish_bracket"] is None
    below, _ = _sdp_minority(3, 3, lo / 1.15, 2.0)
    above, _ = _sdp_minority(3, 3, hi * 1.15, 2.0)
    assert below < 1 - 1e-3 and above > 1 - 1e-4


def test_vanishing_minority_rows_are_detected():
    """Small budgets: past a threshold the minority classifiers vanish; their cosines are not
    reported (E = 0.5 here with C = 6; E = 1 with the CLI's C = 10)."""
    rows = lp.sweep_ratio(majority=3, minority=3, dim=12, energy_w=0.5, energy_h=0.5,
                          ratios=[1.0, 10.0], sdp=True)
    assert rows[0]["minority_vanished"] is False
    assert rows[0]["minority_cosine"] == pytest.approx(-1 / 5, abs=1e-6)
    gone = rows[1]
    assert gone["minority_vanished"] is True and gone["minority_norm_ratio"] < 1e-6
    assert gone["minority_cosine"] is None and gone["sdp_minority_cosine"] is None
    assert "sdp_minority_cosine_noise" in gone
    _, sq_ratio = _sdp_minority(3, 3, 10.0, 0.5)
    assert sq_ratio < 1e-8  # independently: the minority rows are (numerically) zero
    th = lp.collapse_threshold(majority=3, minority=3, dim=12, energy_w=0.5, energy_h=0.5,
                               ratio_max=10.0, rtol=0.05)
    v_lo, v_hi = th["vanish_bracket"]
    assert th["bracket"][1] <= v_hi  # parallel first (or at once), then gone
    assert _sdp_minority(3, 3, v_lo / 1.15, 0.5)[1] > 1e-4
    assert _sdp_minority(3, 3, v_hi * 1.15, 0.5)[1] < 1e-8


def test_sdp_agreement_is_the_largest_gap():
    rows = [{"ratio": 1.0, "objective": 1.0, "sdp_objective": 1.0 + 2e-10,
             "minority_cosine": 0.1, "sdp_minority_cosine": 0.1 + 3e-5},
            {"ratio": 5.0, "objective": 0.5, "sdp_objective": 0.5 - 5e-10,
             "minority_cosine": 0.9, "sdp_minority_cosine": 0.9 - 1e-4},
            {"ratio": 9.0, "objective": 0.2, "sdp_objective": 0.2,
             "minority_cosine": None, "sdp_minority_cosine": None}]
    ag = lp.sdp_agreement(rows)
    assert ag["max_objective_gap"] == pytest.approx(5e-10, rel=1e-6)
    assert ag["objective_gap_ratio"] == 5.0
    assert ag["max_cosine_gap"] == pytest.approx(1e-4, rel=1e-6)
    assert ag["cosine_gap_ratio"] == 5.0


def test_cli_sweeps_and_thresholds_without_figures(tmp_path):
    out = _cli(tmp_path, "--classes", "6", "--per-class", "1", "--dim", "12",
               "--sweep-points", "4", "--max-ratio", "30", "--sweep-energies", "2,2",
               "--restarts", "1", "--threshold-rtol", "0.1", "--no-figures")
    assert out["figures"] == [] and not list(tmp_path.glob("*.png"))
    assert len(out["sweep"]["2,2"]) == 4
    lo, hi = out["thresholds"]["2,2"]["bracket"]
    assert hi / lo <= 1.1
    rows = out["sweep"]["2,2"]
    gaps = [abs(r["objective"] - r["sdp_objective"]) for r in rows]
    assert out["sdp_agreement"]["2,2"]["max_objective_gap"] == max(gaps) < 1e-6
