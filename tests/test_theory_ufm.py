"""Unconstrained features model: solvers against the closed-form minimizers (float64)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

import ncollapse
from ncollapse.cli import main
from ncollapse.theory import ufm


def _ce_reference(w, h, b, labels, lw, lh, lb):
    """Independent evaluation of Zhu et al.'s objective, sample by sample."""
    total = 0.0
    for i, y in enumerate(labels):
        z = w @ h[i] + (0.0 if b is None else b)
        total += logsumexp(z) - z[y]
    reg = lw / 2 * np.sum(w**2) + lh / 2 * np.sum(h**2)
    if b is not None:
        reg += lb / 2 * np.sum(b**2)
    return total / len(labels) + reg


def _rel_gram_error(a, b):
    return np.abs(a - b).max() / max(1.0, np.abs(b).max())


# --------------------------------------------------------------------------- objective


@pytest.mark.parametrize("loss,bias", [("ce", True), ("ce", False), ("mse", True), ("mse", False)])
def test_gradient_matches_finite_differences(loss, bias):
    p = ufm.UFMProblem(3, 2, 4, loss=loss, bias=bias, lambda_w=0.03, lambda_h=0.02,
                       lambda_b=0.05)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(p.num_parameters)
    f, gw, gh, gb = ufm.objective_and_gradient(p, *p.split(x))
    g = p.join(gw, gh, gb)
    eps = 1e-6
    fd = np.empty_like(x)
    for k in range(len(x)):
        e = np.zeros_like(x)
        e[k] = eps
        fd[k] = (ufm.objective(p, *p.split(x + e)) - ufm.objective(p, *p.split(x - e))) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_ce_objective_matches_reference():
    p = ufm.UFMProblem(4, 3, 5, lambda_w=0.01, lambda_h=0.02, lambda_b=0.03)
    rng = np.random.default_rng(0)
    w, h, b = p.split(rng.standard_normal(p.num_parameters))
    ref = _ce_reference(w, h, b, p.labels, 0.01, 0.02, 0.03)
    assert ufm.objective(p, w, h, b) == pytest.approx(ref, rel=1e-13)


# --------------------------------------------------------------------------- CE closed form

CE_GRID = [
    # C, n, d, lambda_w, lambda_h, lambda_b, bias
    (4, 5, 3, 1e-2, 1e-2, 1e-2, True),     # d = C - 1
    (4, 5, 4, 1e-2, 2e-2, 0.0, True),      # d = C, free bias shift
    (4, 5, 7, 5e-3, 1e-2, 1e-2, True),     # d > C
    (3, 4, 5, 2e-2, 5e-3, 0.0, False),     # no bias
    (4, 5, 6, 0.15, 0.15, 0.1, True),      # beta = C sqrt(n lw lh) = 1.34 > 1: the zero regime
]


@pytest.mark.parametrize("c,n,d,lw,lh,lb,bias", CE_GRID)
def test_ce_solver_matches_closed_form(c, n, d, lw, lh, lb, bias):
    p = ufm.UFMProblem(c, n, d, loss="ce", bias=bias, lambda_w=lw, lambda_h=lh, lambda_b=lb)
    sol = ufm.solve(p, seeds=(0, 1))
    cf = ufm.closed_form(p)
    assert cf is not None
    assert sol.gradient_norm < 1e-8
    assert abs(sol.objective - cf.objective) < 1e-9
    cmp = ufm.compare(sol, cf)
    for key in ("weight_gram_error", "feature_gram_error", "cross_gram_error"):
        assert cmp[key] / max(1.0, cf.weight_sq_norm) < 1e-6, key
    if bias:
        assert cmp["bias_error"] < 1e-6
    beta = c * math.sqrt(n * lw * lh)
    assert (cf.regime == "zero") == (beta >= 1)
    if cf.regime == "zero":
        assert np.abs(sol.weight).max() < 1e-8 and np.abs(sol.features).max() < 1e-8
        assert cf.objective == pytest.approx(math.log(c), rel=1e-15)
    else:
        m = ncollapse.measure(sol.features, p.labels, weight=sol.weight, bias=sol.bias)
        assert m.nc1 < 1e-10
        assert m.equinorm_weights < 1e-6 and m.equiangular_weights < 1e-6
        assert m.etf_error_weights < 1e-6
        assert m.self_duality < 1e-10


@pytest.mark.parametrize("d", [3, 4, 8])
def test_ce_closed_form_is_stationary_and_consistent(d):
    """The closed-form point evaluates to the closed-form value and has zero gradient."""
    c, n, lw, lh, lb = 4, 6, 7e-3, 1.1e-2, 3e-3
    p = ufm.UFMProblem(c, n, d, lambda_w=lw, lambda_h=lh, lambda_b=lb)
    cf = ufm.ce_closed_form(c, n, d, lw, lh)
    f, gw, gh, gb = ufm.objective_and_gradient(p, cf.weight, cf.features, cf.bias)
    assert f == pytest.approx(cf.objective, abs=1e-14)
    assert _ce_reference(cf.weight, cf.features, cf.bias, p.labels, lw, lh, lb) == \
        pytest.approx(cf.objective, abs=1e-14)
    assert np.linalg.norm(p.join(gw, gh, gb)) < 1e-12


def test_ce_norm_is_the_one_dimensional_minimum():
    """Along the ETF family the objective is minimal exactly at the closed-form norm."""
    c, n, d, lw, lh = 5, 4, 6, 4e-3, 9e-3
    p = ufm.UFMProblem(c, n, d, lambda_w=lw, lambda_h=lh, lambda_b=1e-2)
    cf = ufm.ce_closed_form(c, n, d, lw, lh)
    unit = cf.weight / math.sqrt(cf.weight_sq_norm)
    kappa = math.sqrt(lw / (lh * n))

    def along(rho):
        w = math.sqrt(rho) * unit
        return ufm.objective(p, w, kappa * np.repeat(w, n, axis=0), np.zeros(c))

    res = minimize_scalar(along, bounds=(1e-6, 10 * cf.weight_sq_norm), method="bounded",
                          options={"xatol": 1e-12})
    assert res.x == pytest.approx(cf.weight_sq_norm, rel=1e-6)
    for factor in (0.9, 0.99, 1.01, 1.1):
        assert along(factor * cf.weight_sq_norm) > cf.objective + 1e-12
    # the feature/weight ratio sqrt(lw/(lh n)) is optimal too
    w = cf.weight
    for k in (0.95, 1.05):
        assert ufm.objective(p, w, k * cf.features, np.zeros(c)) > cf.objective + 1e-12


def test_ce_threshold_is_continuous():
    c, n = 4, 5
    lam_star = 1.0 / (c * math.sqrt(n))  # beta = 1 at lw = lh = lam_star
    below = ufm.ce_closed_form(c, n, 4, lam_star * (1 - 1e-6), lam_star * (1 - 1e-6))
    above = ufm.ce_closed_form(c, n, 4, lam_star * (1 + 1e-6), lam_star * (1 + 1e-6))
    assert below.regime == "collapse" and above.regime == "zero"
    assert below.weight_sq_norm < 1e-4 and above.weight_sq_norm == 0.0
    assert below.objective == pytest.approx(math.log(c), abs=1e-9)


def test_ce_closed_form_validates():
    with pytest.raises(ValueError, match="dim >= classes-1"):
        ufm.ce_closed_form(5, 3, 3, 1e-2, 1e-2)
    with pytest.raises(ValueError, match="lambda_h > 0"):
        ufm.ce_closed_form(5, 3, 4, 1e-2, 0.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        ufm.UFMProblem(3, 2, 2, loss="hinge")


def test_benchmark_size_converges():
    """The size in docs/benchmarks.md: C=10, n=50, d=16 converges to ||grad|| < 1e-8."""
    for loss, bias in (("ce", True), ("mse", False)):
        p = ufm.UFMProblem(10, 50, 16, loss=loss, bias=bias, lambda_b=5e-3 if bias else 0.0)
        sol = ufm.solve(p, seeds=(0,))
        assert sol.gradient_norm < 1e-8
        assert abs(sol.objective - ufm.closed_form(p).objective) < 1e-9


# --------------------------------------------------------------------------- MSE


MSE_GRID = [
    (4, 3, 4, 1e-2, 3e-2),   # d = C
    (4, 3, 7, 5e-2, 2e-2),   # d > C
    (4, 3, 3, 0.1, 0.3),     # d < C: value only
    (3, 2, 5, 2.0, 1.0),     # s = sqrt(lw lh) > 1: zero
]


@pytest.mark.parametrize("c,n,d,lw,lh", MSE_GRID)
def test_mse_bias_free_matches_closed_form(c, n, d, lw, lh):
    p = ufm.UFMProblem(c, n, d, loss="mse", bias=False, lambda_w=lw, lambda_h=lh, lambda_b=0)
    sol = ufm.solve(p, seeds=(0, 1))
    cf = ufm.mse_closed_form(c, n, d, lw, lh)
    assert sol.gradient_norm < 1e-8
    assert abs(sol.objective - cf.objective) < 1e-9
    s = math.sqrt(lw * lh)
    means = sol.features.reshape(c, n, d).mean(axis=1)
    rho = max(1 - s, 0) * math.sqrt(lw / lh)
    if d >= c:
        np.testing.assert_allclose(means @ means.T, rho * np.eye(c), atol=1e-6)
        np.testing.assert_allclose(sol.weight @ sol.weight.T,
                                   max(1 - s, 0) * math.sqrt(lh / lw) * np.eye(c), atol=1e-6)
        cmp = ufm.compare(sol, cf)
        assert cmp["feature_gram_error"] < 1e-6 and cmp["cross_gram_error"] < 1e-6
    else:
        # the rank-d product W H̄ᵀ is (1 - s) times an orthogonal projection of rank d
        prod = sol.weight @ means.T
        np.testing.assert_allclose(prod @ prod, (1 - s) * prod, atol=1e-6)
        assert np.trace(prod) == pytest.approx((1 - s) * d, abs=1e-6)
    if s < 1:
        if d >= c:
            assert ufm.orthogonal_frame_error(sol.weight) < 1e-6
        m = ncollapse.measure(sol.features, p.labels, weight=sol.weight)
        assert m.nc1 < 1e-10


@pytest.mark.parametrize("d", [4, 6])
def test_mse_closed_form_is_stationary(d):
    c, n, lw, lh = 4, 3, 2e-2, 7e-2
    p = ufm.UFMProblem(c, n, d, loss="mse", bias=False, lambda_w=lw, lambda_h=lh, lambda_b=0)
    cf = ufm.mse_closed_form(c, n, d, lw, lh)
    f, gw, gh, _ = ufm.objective_and_gradient(p, cf.weight, cf.features)
    assert f == pytest.approx(cf.objective, abs=1e-15)
    assert np.linalg.norm(gw) + np.linalg.norm(gh) < 1e-13
    # moving the shared scale of W and H either way costs
    for k in (0.98, 1.02):
        assert ufm.objective(p, k * cf.weight, k * cf.features) > cf.objective + 1e-12


@pytest.mark.parametrize("c,n,d", [(3, 4, 2), (4, 3, 6)])
def test_mixon_flow_structure(c, n, d):
    p = ufm.UFMProblem(c, n, d, loss="mse", bias=True, lambda_w=0, lambda_h=0, lambda_b=0)
    cf = ufm.closed_form(p)
    assert cf is not None and cf.objective == 0.0
    sol = ufm.gradient_flow(p, seed=3)
    assert sol.objective < 1e-12
    j = np.eye(c) - np.ones((c, c)) / c
    np.testing.assert_allclose(sol.bias, np.full(c, 1.0 / c), atol=1e-6)
    gram = sol.weight @ sol.weight.T
    assert _rel_gram_error(gram, math.sqrt(n) * j) < 1e-6
    np.testing.assert_allclose(sol.features, np.repeat(sol.weight, n, axis=0) / math.sqrt(n),
                               atol=1e-6)
    cmp = ufm.compare(sol, cf)
    assert cmp["weight_gram_error"] < 1e-6 and cmp["bias_error"] < 1e-6
    m = ncollapse.measure(sol.features, p.labels, weight=sol.weight, bias=sol.bias)
    assert m.nc1 < 1e-10 and m.etf_error_weights < 1e-6 and m.self_duality < 1e-10


# --------------------------------------------------------------------------- trajectory


def test_gradient_descent_trajectory_contract():
    traj = ufm.gradient_descent_trajectory(classes=3, per_class=4, dim=3, lambda_w=5e-3,
                                           lambda_h=5e-3, lambda_b=5e-3, steps=3000, lr=2.0,
                                           num_records=30, seed=2)
    steps = [r["step"] for r in traj]
    assert steps[0] == 0 and steps[-1] == 3000 and steps == sorted(set(steps))
    assert 20 <= len(traj) <= 31
    for r in traj:
        assert r["features"].shape == (12, 3) and r["features"].dtype == np.float64
        assert r["weight"].shape == (3, 3) and r["bias"].shape == (3,)
        np.testing.assert_array_equal(r["labels"], np.repeat(np.arange(3), 4))
    cf = ufm.ce_closed_form(3, 4, 3, 5e-3, 5e-3)
    assert traj[-1]["objective"] < traj[0]["objective"]
    assert traj[-1]["objective"] - cf.objective < 1e-4
    same = ufm.gradient_descent_trajectory(classes=3, per_class=4, dim=3, lambda_w=5e-3,
                                           lambda_h=5e-3, lambda_b=5e-3, steps=3000, lr=2.0,
                                           num_records=30, seed=2)
    np.testing.assert_array_equal(same[-1]["features"], traj[-1]["features"])
    every = ufm.gradient_descent_trajectory(classes=3, per_class=2, dim=2, loss="mse",
                                            lambda_w=0, lambda_h=0, lambda_b=0, bias=False,
                                            steps=10, lr=0.1, record_every=5)
    assert [r["step"] for r in every] == [0, 5, 10] and every[0]["bias"] is None
    with pytest.raises(ValueError, match="lr"):
        ufm.gradient_descent_trajectory(classes=3, per_class=2, dim=2, lambda_w=0,
                                        lambda_h=0, lambda_b=0, steps=10, lr=-1.0)


# --------------------------------------------------------------------------- CLI


def _cli(tmp_path, *argv):
    """Run ``ncollapse theory ufm ARGV`` through the CLI; the JSON result (None on error)."""
    path = tmp_path / "r.json"
    path.unlink(missing_ok=True)
    code = main(["theory", "ufm", *argv, "--out", str(tmp_path), "--json", str(path)])
    return json.loads(path.read_text()) if code == 0 else None


def test_cli_json_and_figure(tmp_path, capsys):
    out = _cli(tmp_path, "--classes", "4", "--per-class", "5", "--dim", "5",
               "--lambda-w", "1e-2", "--lambda-h", "1e-2", "--sweep-points", "4")
    assert abs(out["objective"] - out["closed_form_objective"]) < 1e-9
    assert out["metrics"]["nc1"] < 1e-10 and out["gradient_norm"] < 1e-8
    assert len(out["sweep"]) == 4
    png = tmp_path / "theory-ufm-ce-bias.png"
    assert png.exists() and png.stat().st_size < 200_000
    assert out["figures"] == [str(png)]
    assert "closed form" in capsys.readouterr().out


def test_cli_mse_variants(tmp_path, capsys):
    result = _cli(tmp_path, "--loss", "mse", "--classes", "3", "--per-class", "3", "--dim", "4",
                  "--no-figures")
    assert result["bias"] is False and abs(result["objective"]
                                           - result["closed_form_objective"]) < 1e-9
    assert result["figures"] == [] and not list(tmp_path.glob("*.png"))
    result = _cli(tmp_path, "--loss", "mse", "--bias", "--classes", "3", "--per-class", "3",
                  "--dim", "2", "--no-figures")
    assert result["lambda_w"] == 0 and result["closed_form_objective"] == 0.0
    assert result["objective"] < 1e-12
    capsys.readouterr()
    assert _cli(tmp_path, "--loss", "mse", "--no-bias", "--lambda-b", "0.1",
                "--no-figures") is None
    assert "--lambda-b has no effect" in capsys.readouterr().err


# --------------------------------------------------------------------------- MSE with bias


def _mse_reference(w, h, b, labels, c, lw, lh, lb):
    """Independent evaluation of the MSE UFM objective with bias, sample by sample."""
    n_total = len(labels)
    total = 0.0
    for i, y in enumerate(labels):
        r = w @ h[i] + b
        r[y] -= 1.0
        total += r @ r
    return (total / (2 * n_total) + lw / (2 * c) * np.sum(w**2)
            + lh / (2 * n_total) * np.sum(h**2) + lb / (2 * c) * np.sum(b**2))


def _convex_value(c, lw, lh, lb):
    """The convex problem of docs/theory/ufm.md §4 step 1, solved by cvxpy (nuclear norm)."""
    import cvxpy as cp

    z = cp.Variable((c, c))
    b = cp.Variable((1, c))
    s = math.sqrt(lw * lh)
    obj = (cp.sum_squares(z + np.ones((c, 1)) @ b - np.eye(c)) + 2 * s * cp.normNuc(z)
           + lb * cp.sum_squares(b))
    prob = cp.Problem(cp.Minimize(obj))
    prob.solve(solver=cp.CLARABEL)
    return prob.value / (2 * c)


MSE_BIAS_GRID = [
    # C, n, d, lambda_w, lambda_h, lambda_b
    (5, 4, 6, 0.03, 0.05, 0.0),    # the example
    (4, 3, 3, 0.1, 0.02, 0.0),     # d = C - 1
    (4, 3, 5, 0.05, 0.05, 0.02),   # lambda_b > 0, s >= s_b: the bias shrinks
    (4, 3, 5, 0.05, 0.05, 2.0),    # lambda_b > 0, s < s_b: the features carry the mean output
    (3, 2, 4, 1.5, 1.0, 0.0),      # s > 1: W = H = 0, b = 1/C
]


@pytest.mark.parametrize("c,n,d,lw,lh,lb", MSE_BIAS_GRID)
def test_mse_bias_closed_form_against_independent_solves(c, n, d, lw, lh, lb):
    cf = ufm.mse_bias_closed_form(c, n, d, lw, lh, lb)
    assert abs(cf.objective - _convex_value(c, lw, lh, lb)) < 1e-7
    labels = np.repeat(np.arange(c), n)

    def f(x):
        w = x[: c * d].reshape(c, d)
        h = x[c * d: c * d + c * n * d].reshape(c * n, d)
        return _mse_reference(w, h, x[c * d + c * n * d:], labels, c, lw, lh, lb)

    x = np.concatenate([cf.weight.ravel(), cf.features.ravel(), cf.bias])
    assert f(x) == pytest.approx(cf.objective, abs=1e-14)
    eps = 1e-6
    grad = [(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(len(x))]
    assert np.abs(grad).max() < 1e-8
    p = ufm.UFMProblem(c, n, d, loss="mse", bias=True, lambda_w=lw, lambda_h=lh, lambda_b=lb)
    assert ufm.closed_form(p).objective == cf.objective
    sol = ufm.solve(p, seeds=(0, 1))
    assert abs(sol.objective - cf.objective) < 1e-9
    cmp = ufm.compare(sol, cf)
    assert cmp["weight_gram_error"] < 1e-6 and cmp["bias_error"] < 1e-6
    s = math.sqrt(lw * lh)
    if lb == 0 and s < 1:
        assert cf.objective == pytest.approx((c - 1) * (1 - (1 - s) ** 2) / (2 * c), rel=1e-15)
        m = ncollapse.measure(sol.features, labels, weight=sol.weight, bias=sol.bias)
        assert m.etf_error_weights < 1e-6 and m.self_duality < 1e-10 and m.nc1 < 1e-10


def test_mse_bias_closed_form_below_c_minus_1_dims():
    """d < C−1: only the value is closed-form; an independent BFGS on the test's objective."""
    from scipy.optimize import minimize

    c, n, d, lw, lh = 5, 2, 2, 0.03, 0.05
    cf = ufm.mse_bias_closed_form(c, n, d, lw, lh, 0.0)
    assert cf.weight is None
    labels = np.repeat(np.arange(c), n)

    def f(x):
        w = x[: c * d].reshape(c, d)
        h = x[c * d: c * d + c * n * d].reshape(c * n, d)
        return _mse_reference(w, h, x[c * d + c * n * d:], labels, c, lw, lh, 0.0)

    rng = np.random.default_rng(0)
    best = min(minimize(f, rng.standard_normal(c * d + c * n * d + c), method="BFGS",
                        options={"gtol": 1e-10}).fun for _ in range(4))
    assert abs(best - cf.objective) < 1e-8


@pytest.mark.filterwarnings("ignore:feature dimension d = 3 is smaller")
def test_mse_below_c_dims_reports_the_mean_norms(tmp_path):
    """Bias-free MSE with d < C: mean ‖w_c‖² is ρ_w·d/C, not the d ≥ C value ρ_w."""
    c, n, d, lw, lh = 5, 4, 3, 0.03, 0.05
    s = math.sqrt(lw * lh)
    rho_w, rho_h = (1 - s) * math.sqrt(lh / lw), (1 - s) * math.sqrt(lw / lh)
    cf = ufm.mse_closed_form(c, n, d, lw, lh)
    assert cf.weight_sq_norm == pytest.approx(rho_w * d / c, rel=1e-14)
    assert cf.feature_sq_norm == pytest.approx(rho_h * d / c, rel=1e-14)
    out = _cli(tmp_path, "--loss", "mse", "--classes", str(c), "--per-class", str(n),
               "--dim", str(d), "--lambda-w", str(lw), "--lambda-h", str(lh), "--no-figures",
               "--sweep-points", "0")
    assert out["closed_form"]["weight_sq_norm"] == pytest.approx(rho_w * d / c, rel=1e-14)
    assert out["comparison"]["weight_sq_norm"] == pytest.approx(rho_w * d / c, rel=1e-7)
    assert out["comparison"]["feature_sq_norm"] == pytest.approx(rho_h * d / c, rel=1e-7)


def test_cli_mse_bias_weight_decay_and_sweep_without_figures(tmp_path):
    out = _cli(tmp_path, "--loss", "mse", "--bias", "--classes", "5", "--per-class", "4",
               "--dim", "6", "--lambda-w", "0.03", "--lambda-h", "0.05", "--no-figures",
               "--sweep-points", "4")
    s = math.sqrt(0.03 * 0.05)
    assert out["lambda_b"] == 0.0
    assert out["closed_form_objective"] == pytest.approx(4 * (1 - (1 - s) ** 2) / 10, rel=1e-15)
    assert abs(out["objective"] - out["closed_form_objective"]) < 1e-12
    assert out["comparison"]["bias_error"] < 1e-6
    assert out["figures"] == [] and len(out["sweep"]) == 4  # the sweep runs without figures
    for row in out["sweep"]:
        assert abs(row["objective"] - row["closed_form_objective"]) < 1e-9
