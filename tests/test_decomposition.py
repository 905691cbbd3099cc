"""The MSE loss decomposition L = L_NC1 + L_NC2/3 + L_LS⊥ [Han22] and the least-squares
classifier (ncollapse.metrics.decomposition), checked against independent float64 solves
(numpy.linalg.lstsq on the stacked ridge system, the loss summed directly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ridge_reference import balanced_features, direct_loss, ridge_lstsq

import ncollapse.theory
import ncollapse.theory.central_path
from ncollapse.metrics import class_means, least_squares_classifier, mse_decomposition

TOL = 1e-10


@pytest.mark.parametrize("lam", [0.0, 1e-3, 0.3, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_and_least_squares(lam: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, y = balanced_features(rng)
    c, d = 4, h.shape[1]
    w, b = rng.normal(size=(c, d)), rng.normal(size=c)
    out = mse_decomposition(h, y, w, b, lam)
    assert abs(out["loss"] - direct_loss(h, y, w, b, lam)) < TOL
    assert abs(out["nc1"] + out["nc2_3"] + out["ls_perp"] - out["loss"]) < TOL
    w_ls, b_ls = ridge_lstsq(h, y, c, lam)
    np.testing.assert_allclose(out["weight_ls"], w_ls, rtol=0, atol=TOL)
    np.testing.assert_allclose(out["bias_ls"], b_ls, rtol=0, atol=TOL)
    # the least-squares loss is the minimum: nc1 + nc2_3 is the loss at W_LS
    assert abs(out["nc1"] + out["nc2_3"] - direct_loss(h, y, w_ls, b_ls, lam)) < TOL
    assert out["ls_perp"] > 0


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_ls_perp_vanishes_on_the_central_path(lam: float) -> None:
    rng = np.random.default_rng(5)
    h, y = balanced_features(rng)
    w_ls, b_ls = ridge_lstsq(h, y, 4, lam)
    out = mse_decomposition(h, y, w_ls, b_ls, lam)
    assert out["ls_perp"] < 1e-20
    assert abs(out["nc1"] + out["nc2_3"] - out["loss"]) < TOL


@pytest.mark.parametrize("lam", [0.0, 1e-2])
def test_nc1_term_vanishes_as_features_collapse(lam: float) -> None:
    rng = np.random.default_rng(7)
    c, d = 4, 6
    w, b = rng.normal(size=(c, d)), rng.normal(size=c)
    nc1 = []
    for noise in [1e-1, 1e-2, 1e-3, 1e-4]:
        h, y = balanced_features(np.random.default_rng(7), c=c, d=d, noise=noise)
        out = mse_decomposition(h, y, w, b, lam)
        assert abs(out["nc1"] + out["nc2_3"] + out["ls_perp"] - out["loss"]) < TOL
        assert abs(out["loss"] - direct_loss(h, y, w, b, lam)) < TOL
        nc1.append(out["nc1"] - 0.5 * lam * (np.sum(out["weight_ls"] ** 2)
                                             + np.sum(out["bias_ls"] ** 2)))
    # the within-class part of L_NC1 shrinks with the spread
    assert all(a > b_ for a, b_ in zip(nc1, nc1[1:], strict=False))
    assert nc1[-1] < 1e-5 * nc1[0]  # ∝ σ² since W_LS stays bounded


def test_bias_none_is_b_zero_and_torch_inputs() -> None:
    rng = np.random.default_rng(3)
    h, y = balanced_features(rng)
    w = rng.normal(size=(4, h.shape[1]))
    ref = mse_decomposition(h, y, w, np.zeros(4), 0.2)
    out = mse_decomposition(torch.tensor(h, dtype=torch.float64), torch.tensor(y), torch.tensor(w),
                            None, 0.2)
    for key in ("loss", "nc1", "nc2_3", "ls_perp"):
        assert out[key] == ref[key]
    np.testing.assert_array_equal(out["weight_ls"], ref["weight_ls"])


def test_singular_total_covariance_lambda_zero() -> None:
    # d > N - 1: Σ_T singular; the min-norm least-squares classifier keeps the identity exact
    rng = np.random.default_rng(11)
    h, y = balanced_features(rng, c=3, n=2, d=9)
    w, b = rng.normal(size=(3, 9)), rng.normal(size=3)
    out = mse_decomposition(h, y, w, b, 0.0)
    assert abs(out["nc1"] + out["nc2_3"] + out["ls_perp"] - out["loss"]) < TOL
    # the minimiser is not unique: compare fitted values and minimum loss, not the weights
    w_ls, b_ls = ridge_lstsq(h, y, 3, 0.0)
    np.testing.assert_allclose(h @ out["weight_ls"].T + out["bias_ls"], h @ w_ls.T + b_ls,
                               rtol=0, atol=1e-9)
    assert abs(out["nc1"] + out["nc2_3"] - direct_loss(h, y, w_ls, b_ls, 0.0)) < TOL
    # W_LS is the min-norm solution of the reduced (bias-eliminated) system: no null-space part
    null = np.linalg.svd(h - h.mean(axis=0))[2][np.linalg.matrix_rank(h - h.mean(axis=0)):]
    assert np.abs(out["weight_ls"] @ null.T).max() < 1e-12


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_target_scale(scale: float) -> None:
    rng = np.random.default_rng(8)
    h, y = balanced_features(rng)
    c = 4
    w, b = rng.normal(size=(c, h.shape[1])), rng.normal(size=c)
    out = mse_decomposition(h, y, w, b, 0.2, target_scale=scale)
    assert abs(out["loss"] - direct_loss(h, y, w, b, 0.2, scale)) < TOL * scale**2
    assert abs(out["nc1"] + out["nc2_3"] + out["ls_perp"] - out["loss"]) < TOL * scale**2
    # least squares against the scaled targets k·e_y
    w_ls, b_ls = ridge_lstsq(h, y, c, 0.2, scale)
    np.testing.assert_allclose(out["weight_ls"], w_ls, rtol=0, atol=TOL * scale)
    np.testing.assert_allclose(out["bias_ls"], b_ls, rtol=0, atol=TOL * scale)
    assert abs(out["nc1"] + out["nc2_3"] - direct_loss(h, y, w_ls, b_ls, 0.2, scale)) \
        < TOL * scale**2


def test_errors_name_the_problem() -> None:
    rng = np.random.default_rng(0)
    h, y = balanced_features(rng)
    w = rng.normal(size=(4, h.shape[1]))
    with pytest.raises(ValueError, match="balanced"):
        mse_decomposition(h[1:], y[1:], w, None, 0.0)
    with pytest.raises(ValueError, match="lam"):
        mse_decomposition(h, y, w, None, -1.0)
    with pytest.raises(ValueError, match="dim"):
        mse_decomposition(h[:, :3], y, w, None, 0.0)
    with pytest.raises(ValueError, match="labels"):
        mse_decomposition(h, y + 1, w, None, 0.0)
    with pytest.raises(ValueError, match="bias"):
        mse_decomposition(h, y, w, np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="target_scale"):
        mse_decomposition(h, y, w, None, 0.0, target_scale=0.0)


@pytest.mark.parametrize("lam", [0.0, 0.05, 1.0])
def test_least_squares_classifier_is_the_ridge_solution(lam: float) -> None:
    rng = np.random.default_rng(12)
    h, y = balanced_features(rng, c=5, n=7, d=4)
    w, b = least_squares_classifier(h, class_means(h, y, 5)[0], lam)
    w_ref, b_ref = ridge_lstsq(h, y, 5, lam)
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(b, b_ref, rtol=0, atol=TOL)


def test_old_import_paths_are_the_metrics_function() -> None:
    assert ncollapse.theory.mse_decomposition is mse_decomposition
    assert ncollapse.theory.central_path.mse_decomposition is mse_decomposition
