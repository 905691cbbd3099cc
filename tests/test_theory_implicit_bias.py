"""Implicit bias [Sou18]: hard-margin SVMs (KKT, sklearn) and gradient descent toward them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ncollapse import measure
from ncollapse.cli import main
from ncollapse.theory.implicit_bias import (
    _ce_grad_logits,
    collapsed_data,
    crammer_singer_svm,
    direction_gap,
    fit_log_slopes,
    gd_cross_entropy,
    gd_logistic,
    hard_margin_svm,
    noise_regimes,
    separable_binary_data,
)


def test_binary_svm_satisfies_kkt() -> None:
    x, y = separable_binary_data(30, 5, seed=1)
    svm = hard_margin_svm(x, y)
    assert svm.polished and svm.bias is None
    margins = y * (x @ svm.weight)
    np.testing.assert_allclose(svm.margins, margins, atol=1e-12)
    assert margins.min() > 1 - 1e-10
    alpha = svm.dual
    assert alpha.min() >= 0
    active = alpha > 0
    assert 1 <= active.sum() <= 5
    np.testing.assert_allclose(margins[active], 1.0, atol=1e-10)  # active constraints = 1
    np.testing.assert_allclose(svm.weight, (alpha * y) @ x, atol=1e-10)  # stationarity
    assert np.all(margins[~active] > 1 + 1e-8)  # strictly inactive elsewhere (generic data)
    # the QP solver itself agrees with the polished point, and the objective is ½‖w‖²
    assert abs(svm.objective - svm.qp_objective) < 1e-6 * svm.objective
    assert abs(svm.objective - 0.5 * svm.weight @ svm.weight) < 1e-12
    # strong duality: ½‖w‖² = Σα − ½‖w‖²
    assert abs(alpha.sum() - 2 * svm.objective) < 1e-9


def test_binary_svm_with_intercept_matches_sklearn() -> None:
    from sklearn.svm import SVC

    x, y = separable_binary_data(40, 6, seed=0)
    x = x + np.array([1.5, -0.5, 0, 0, 2.0, 0])  # off-centre so the intercept matters
    svm = hard_margin_svm(x, y, intercept=True)
    ref = SVC(kernel="linear", C=1e10, tol=1e-9).fit(x, y)
    np.testing.assert_allclose(svm.weight, ref.coef_[0], atol=1e-5)
    assert abs(svm.bias - ref.intercept_[0]) < 1e-5
    assert set(np.flatnonzero(svm.dual > 0)) == set(ref.support_.tolist())
    assert abs(svm.dual @ y) < 1e-10  # KKT for the free intercept
    np.testing.assert_allclose(svm.margins[svm.dual > 0], 1.0, atol=1e-10)


def test_crammer_singer_svm_satisfies_kkt() -> None:
    x, y, _ = collapsed_data(4, 8, 6, noise=0.4, seed=2)
    svm = crammer_singer_svm(x, y)
    w = svm.weight
    z = x @ w.T
    rows = np.arange(len(y))
    marg = z[rows, y][:, None] - z
    marg[rows, y] = np.nan
    np.testing.assert_allclose(svm.margins, marg, atol=1e-12)
    assert np.nanmin(marg) > 1 - 1e-10
    alpha = np.nan_to_num(svm.dual)
    active = alpha > 0
    np.testing.assert_allclose(marg[active], 1.0, atol=1e-10)
    # stationarity: w_k = Σ_n [k = y_n] Σ_j α_nj x_n − Σ_n α_nk x_n
    recon = np.zeros_like(w)
    np.add.at(recon, y, alpha.sum(axis=1)[:, None] * x)
    recon -= alpha.T @ x
    np.testing.assert_allclose(w, recon, atol=1e-10)
    np.testing.assert_allclose(w.sum(axis=0), 0.0, atol=1e-10)
    assert abs(alpha.sum() - 2 * svm.objective) < 1e-9
    assert abs(svm.objective - svm.qp_objective) < 1e-6 * svm.objective


def test_crammer_singer_on_collapsed_features_is_aligned_with_the_means() -> None:
    k, d = 5, 7
    x, y, means = collapsed_data(k, 4, d, noise=0.0, seed=3)
    svm = crammer_singer_svm(x, y)
    # exactly collapsed on a unit ETF: ŵ_k = (K−1)/K · μ_k, ½Σ‖ŵ_k‖² = (K−1)²/(2K)
    np.testing.assert_allclose(svm.weight, (k - 1) / k * means, atol=1e-8)
    assert abs(svm.objective - (k - 1) ** 2 / (2 * k)) < 1e-8
    assert measure(x, y, weight=svm.weight).self_duality < 1e-14
    sd = []
    for noise in [0.3, 0.1, 0.01]:
        xn, yn, _ = collapsed_data(k, 4, d, noise=noise, seed=3)
        sd.append(measure(xn, yn, weight=crammer_singer_svm(xn, yn).weight).self_duality)
    assert sd[0] > sd[1] > sd[2] and sd[2] < 1e-3


def test_gd_logistic_converges_in_direction_to_the_svm() -> None:
    x, y = separable_binary_data(40, 6, seed=0)
    svm = hard_margin_svm(x, y)
    traj = gd_logistic(x, y, steps=100_000, num_records=80)
    gap = direction_gap(traj.weights, svm.weight)
    t = traj.steps
    assert np.isnan(gap[0])
    tail = t >= 100
    assert np.all(np.diff(gap[tail]) < 0)  # the gap keeps shrinking …
    assert gap[-1] < 0.1 and gap[-1] < 0.3 * gap[t == 10][0]  # … and is small at the end
    fit = fit_log_slopes(t, traj.weights, svm.weight)
    early = fit_log_slopes(t[t <= 10_000], traj.weights[t <= 10_000], svm.weight)
    expected = np.linalg.norm(svm.weight)
    assert fit["norm_slope_expected"] == expected
    # ‖w‖ ~ ‖ŵ‖·ln t: the fitted slope approaches ‖ŵ‖ from below
    assert early["norm_slope"] < fit["norm_slope"] < expected
    assert abs(fit["norm_slope"] / expected - 1) < 0.1
    # gap·ln t is bounded: falling over the last two decades
    assert fit["gap_log_slope"] < 0
    # the loss decays like 1/t
    lt = traj.loss[t >= 1000] * t[t >= 1000]
    assert lt.max() / lt.min() < 1.5
    # the mean-loss GD step is within (0, 2/β)
    assert traj.lr * traj.smoothness == pytest.approx(1.0)


def test_gd_cross_entropy_on_collapsed_features() -> None:
    x, y, _ = collapsed_data(4, 6, 5, noise=0.3, seed=1)
    svm = crammer_singer_svm(x, y)
    traj = gd_cross_entropy(x, y, steps=20_000, num_records=60)
    np.testing.assert_allclose(traj.weights.sum(axis=1), 0.0, atol=1e-12)  # Σ_k w_k stays 0
    gap = direction_gap(traj.weights, svm.weight)
    tail = traj.steps >= 100
    assert np.all(np.diff(gap[tail]) < 0)
    assert gap[-1] < 0.6 * gap[traj.steps == 10][0]
    fit = fit_log_slopes(traj.steps, traj.weights, svm.weight)
    assert 0.7 < fit["norm_slope"] / fit["norm_slope_expected"] < 1.0
    assert abs(fit["gap_log_slope"]) < 0.2  # roughly bounded
    lt = traj.loss[traj.steps >= 1000] * traj.steps[traj.steps >= 1000]
    assert lt.max() / lt.min() < 2.0


def test_cross_entropy_gradient_and_tiny_losses() -> None:
    from scipy.special import logsumexp, softmax

    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4)) * 3
    y = rng.integers(0, 4, size=6)
    loss, grad = _ce_grad_logits(z.copy(), y)
    np.testing.assert_allclose(loss, logsumexp(z, axis=1) - z[np.arange(6), y], rtol=1e-13)
    np.testing.assert_allclose(grad, softmax(z, axis=1) - np.eye(4)[y], atol=1e-15)
    big = np.array([[40.0, 0.0, 0.0]])
    loss, grad = _ce_grad_logits(big, np.array([0]))
    assert loss[0] == pytest.approx(np.log1p(2 * np.exp(-40.0)), rel=1e-14)
    assert grad[0, 0] == pytest.approx(-2 * np.exp(-40.0), rel=1e-14)


def test_errors() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    y = np.where(rng.random(30) > 0.5, 1, -1)
    with pytest.raises(ValueError, match="not linearly separable"):
        hard_margin_svm(x, y)
    xs, ys = separable_binary_data(10, 3)
    with pytest.raises(ValueError, match="lr_scale"):
        gd_logistic(xs, ys, lr_scale=2.5)
    with pytest.raises(ValueError, match="binary labels"):
        hard_margin_svm(xs, np.arange(10))


def test_cli_implicit_bias(tmp_path) -> None:
    argv = ["--steps", "3000", "--noise", "0", "--out", str(tmp_path),
            "--json", str(tmp_path / "r.json")]
    assert main(["theory", "implicit-bias", *argv]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert abs(res["objective"] - res["closed_form_objective"]) < 1e-8
    assert res["metrics"]["self_duality"] < 1e-12
    assert res["binary"]["norm_slope"] > 0
    assert (tmp_path / "theory-implicit-bias.png").is_file()


def _independent_cs_self_duality(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Crammer–Singer SVM by sklearn's liblinear (huge C = hard margin), NC3 by hand."""
    from sklearn.svm import LinearSVC

    w = LinearSVC(multi_class="crammer_singer", C=1e6, fit_intercept=False, tol=1e-10,
                  max_iter=1_000_000).fit(x, y).coef_
    means = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    centred = means - means.mean(axis=0)
    return float(np.sum((w / np.linalg.norm(w) - centred / np.linalg.norm(centred)) ** 2))


def test_self_duality_regimes() -> None:
    """GD starts exactly at the class means and moves to its SVM limit, whose self-duality is
    O(σ²): near 0 only as σ → 0 (docs/theory/implicit-bias.md)."""
    small, noisy = noise_regimes(4, 10, 6, (0.01, 0.3), steps=3000, num_records=25)
    for reg in (small, noisy):
        x, y, _ = collapsed_data(4, 10, 6, noise=reg["noise"], seed=0)
        svm_sd = _independent_cs_self_duality(x, y, 4)
        assert abs(reg["svm_self_duality"] - svm_sd) < 1e-6
        sd = reg["self_duality"][1:]  # step 0 is W = 0
        assert sd[0] < 1e-20  # the first step is along the centred class means
        assert np.all(np.diff(sd) > -1e-12)  # and self-duality only grows...
        assert sd[-1] < svm_sd  # ...towards the SVM's
    ratio = (small["noise"] / noisy["noise"]) ** 2
    assert small["svm_self_duality"] < 2 * ratio * noisy["svm_self_duality"]
    assert noisy["self_duality"][-1] > 0.5 * noisy["svm_self_duality"]


def test_cli_regimes_without_figures(tmp_path) -> None:
    path = tmp_path / "r.json"
    assert main(["theory", "implicit-bias", "--steps", "2000", "--regime-noises", "0.01 0.3",
                 "--no-figures", "--out", str(tmp_path), "--json", str(path)]) == 0
    res = json.loads(path.read_text())
    assert res["figures"] == []
    assert [r["noise"] for r in res["self_duality_regimes"]] == [0.01, 0.3]
    noisy = res["self_duality_regimes"][1]
    assert noisy["self_duality"][0] is None  # W = 0 at t = 0
    assert noisy["svm_self_duality"] == pytest.approx(
        res["svm_self_duality_vs_noise"][0]["self_duality"], rel=1e-9)
