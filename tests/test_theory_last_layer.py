"""Last layer on collapsed features [Pap20]: closed form at σ = 0, self-duality, the channel."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import ndtr

from ncollapse import measure
from ncollapse.cli import main
from ncollapse.theory.implicit_bias import collapsed_data
from ncollapse.theory.last_layer import (
    channel_error_exact,
    channel_error_union,
    classifier_objective,
    etf_pairwise_distance,
    ncc_error_monte_carlo,
    noiseless_solution,
    train_classifier,
)


@pytest.mark.parametrize("bias", [True, False])
def test_objective_gradient_matches_finite_differences(bias: bool) -> None:
    rng = np.random.default_rng(0)
    h, y, _ = collapsed_data(3, 4, 4, noise=0.5, seed=1)
    size = 12 + (3 if bias else 0)
    p = rng.normal(size=size)
    _, g = classifier_objective(p, h, y, 3, 0.1, 0.2, bias)
    fd = np.zeros(size)
    for i in range(size):
        e = np.zeros(size)
        e[i] = 1e-6
        fd[i] = (classifier_objective(p + e, h, y, 3, 0.1, 0.2, bias)[0]
                 - classifier_objective(p - e, h, y, 3, 0.1, 0.2, bias)[0]) / 2e-6
    np.testing.assert_allclose(g, fd, atol=1e-8)


@pytest.mark.parametrize(("c", "d", "lam"), [(4, 3, 5e-3), (4, 4, 1e-2), (5, 9, 5e-3),
                                             (3, 6, 0.3)])
def test_noiseless_solution_is_the_same_etf(c: int, d: int, lam: float) -> None:
    h, y, means = collapsed_data(c, 3, d, noise=0.0, seed=c + d)
    sol = train_classifier(h, y, c, lambda_w=lam, lambda_b=1e-2, init_seed=0)
    assert sol["converged"]
    closed = noiseless_solution(c, 1.0, lam)
    np.testing.assert_allclose(sol["weight"], closed["a"] * means, atol=1e-8)
    np.testing.assert_allclose(sol["bias"], 0.0, atol=1e-9)
    assert abs(sol["objective"] - closed["objective"]) < 1e-12
    # the 1-D problem solved independently
    kappa = c / (c - 1.0)
    ref = minimize_scalar(lambda a: math.log1p((c - 1) * math.exp(-kappa * a))
                          + 0.5 * lam * c * a * a, bounds=(0, 100), method="bounded",
                          options={"xatol": 1e-12})
    assert abs(ref.x - closed["a"]) < 1e-5
    assert measure(h, y, weight=sol["weight"], bias=sol["bias"]).self_duality < 1e-14


def test_self_duality_vanishes_as_noise_vanishes_and_ncc_agrees() -> None:
    c, n, d = 5, 10, 8
    sd = []
    for sigma in [0.3, 0.1, 0.03, 0.01]:
        h, y, _ = collapsed_data(c, n, d, noise=sigma, seed=4)
        sol = train_classifier(h, y, c, lambda_w=5e-3, lambda_b=5e-3)
        m = measure(h, y, weight=sol["weight"], bias=sol["bias"])
        sd.append(m.self_duality)
        if sigma <= 0.1:
            assert m.ncc_mismatch == 0 and m.accuracy == 1
    assert all(a > b for a, b in zip(sd, sd[1:], strict=False))
    assert sd[-1] < 1e-4
    # ∝ σ²: a third of the noise, a ninth of the self-duality
    assert 6 < sd[-2] / sd[-1] < 13


def test_gradient_descent_reaches_the_lbfgs_solution() -> None:
    h, y, _ = collapsed_data(4, 8, 5, noise=0.05, seed=2)
    ref = train_classifier(h, y, 4, lambda_w=0.05, lambda_b=0.05)
    sd = []
    gd = train_classifier(h, y, 4, lambda_w=0.05, lambda_b=0.05, method="gd", steps=3000,
                          init_seed=1, track=lambda w, b: measure(h, y, weight=w).self_duality)
    sd = np.array(gd["tracked"])
    assert sd[0] > 0.5 and sd[-1] < 1e-2 * sd[0]
    assert gd["objective"] - ref["objective"] < 1e-8
    np.testing.assert_allclose(gd["weight"], ref["weight"], atol=1e-4)


def test_channel_formula() -> None:
    sig = np.array([0.3, 0.6, 1.2])
    # C = 2: two antipodal points at distance 2α, error Q(α/σ)
    np.testing.assert_allclose(channel_error_exact(2, sig), ndtr(-1.0 / sig), rtol=1e-10)
    assert etf_pairwise_distance(2) == pytest.approx(2.0)
    for c in (3, 5, 10):
        exact = channel_error_exact(c, sig)
        q = ndtr(-etf_pairwise_distance(c) / (2 * sig))
        assert np.all(q <= exact) and np.all(exact <= channel_error_union(c, sig))
        # small σ: the union bound becomes tight
        tiny = channel_error_exact(c, 0.15)[0]
        assert tiny == pytest.approx(channel_error_union(c, 0.15)[0], rel=0.02)


@pytest.mark.parametrize("sigma", [0.5, 0.9])
def test_channel_formula_matches_monte_carlo(sigma: float) -> None:
    rng = np.random.default_rng(0)
    c, d = 5, 7
    _, _, etf = collapsed_data(c, 1, d, noise=0.0, seed=3)
    samples = 40000
    mc = ncc_error_monte_carlo(etf, sigma, samples // c, rng)["ncc_error"]
    p = channel_error_exact(c, sigma)[0]
    assert abs(mc - p) < 4 * math.sqrt(p * (1 - p) / samples)
    # the same formula with δ = α√2 is the orthogonal frame (also correlation ½)
    ortho = np.eye(c, d)
    mc_o = ncc_error_monte_carlo(ortho, sigma, samples // c, rng)["ncc_error"]
    p_o = channel_error_exact(c, sigma, distance=math.sqrt(2.0))[0]
    assert abs(mc_o - p_o) < 4 * math.sqrt(p_o * (1 - p_o) / samples)
    assert p < p_o  # same norms, the ETF decodes better


def test_errors() -> None:
    h, y, _ = collapsed_data(3, 2, 3, noise=0.1)
    with pytest.raises(ValueError, match="lambda_w"):
        train_classifier(h, y, 3, lambda_w=0.0)
    with pytest.raises(ValueError, match="method"):
        train_classifier(h, y, 3, method="adam")


def test_cli_last_layer(tmp_path) -> None:
    argv = ["--noise", "0", "--classes", "4", "--per-class", "5", "--dim", "4",
            "--gd-steps", "100", "--mc-samples", "500", "--sweep-points", "3",
            "--channel-points", "3", "--out", str(tmp_path),
            "--json", str(tmp_path / "r.json")]
    assert main(["theory", "last-layer", *argv]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert abs(res["objective"] - res["closed_form_objective"]) < 1e-12
    assert res["metrics"]["self_duality"] < 1e-14
    assert res["metrics"]["ncc_mismatch"] == 0
    assert (tmp_path / "theory-last-layer.png").is_file()
