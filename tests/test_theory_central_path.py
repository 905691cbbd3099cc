"""Central path [Han22]: loss, gradient, SNR dynamics and the run-directory plot, checked against
independent float64 solves. (The MSE decomposition itself: tests/test_decomposition.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
from ridge_reference import balanced_features, direct_loss, ridge_lstsq

from ncollapse.cli import main
from ncollapse.config import load_config
from ncollapse.metrics import mse_decomposition
from ncollapse.rundir import RunWriter
from ncollapse.theory.central_path import (
    central_path_gradient,
    central_path_loss,
    initial_features,
    ode_snr_trajectory,
    renormalized_flow,
    snr_singular_values,
)
from ncollapse.theory.figures import (
    mse_decomposition_figure,
    read_mse_decomposition,
    run_label,
)
from ncollapse.training import train

TOL = 1e-10


def _independent_cp_loss(h: np.ndarray, y: np.ndarray, c: int) -> float:
    w, b = ridge_lstsq(h, y, c, 0.0)
    return float(direct_loss(h, y, w, b, 0.0))


def _independent_omega(h: np.ndarray, y: np.ndarray, c: int) -> np.ndarray:
    """Singular values of Σ_W^{-1/2} M̃ via scipy's matrix square root (a different route)."""
    means = np.stack([h[y == k].mean(axis=0) for k in range(c)])
    dev = h - means[y]
    sw = dev.T @ dev / h.shape[0]
    mt = (means - means.mean(axis=0)).T
    return np.linalg.svd(np.linalg.solve(np.real(scipy.linalg.sqrtm(sw)), mt),
                         compute_uv=False)[: c - 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_central_path_loss_closed_form_and_affine_invariance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c, d = 5, 7
    h, y = balanced_features(rng, c=c, n=6, d=d)
    loss = central_path_loss(h, y)
    assert abs(loss - _independent_cp_loss(h, y, c)) < TOL
    omega = snr_singular_values(h, y)
    np.testing.assert_allclose(omega, _independent_omega(h, y, c), rtol=1e-10)
    assert abs(loss - 0.5 * np.sum(1.0 / (c + omega**2))) < TOL
    for _ in range(3):
        a = rng.normal(size=(d, d))  # invertible with probability 1
        shift = rng.normal(size=d) * 5
        mapped = h @ a.T + shift
        assert abs(central_path_loss(mapped, y) - loss) < TOL
        np.testing.assert_allclose(snr_singular_values(mapped, y), omega, rtol=1e-9)
    # not invariant under a map that merges two directions (the test can tell)
    a = np.eye(d)
    a[:, 0] = 0.0
    assert abs(_independent_cp_loss(h @ a.T, y, c) - loss) > 1e-3


def test_central_path_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(4)
    c = 3
    h, y = balanced_features(rng, c=c, n=5, d=4)
    g = central_path_gradient(h, y)
    eps = 1e-6
    fd = np.zeros_like(h)
    for idx in np.ndindex(*h.shape):
        e = np.zeros_like(h)
        e[idx] = eps
        up, down = _independent_cp_loss(h + e, y, c), _independent_cp_loss(h - e, y, c)
        fd[idx] = (up - down) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-9)
    # orthogonal to the orbit of affine maps: Σ g_i = 0 and Σ g_i h_iᵀ = 0
    assert np.abs(g.sum(axis=0)).max() < 1e-14
    assert np.abs(g.T @ h).max() < 1e-12


def test_initial_features_have_the_requested_snr() -> None:
    omega0 = np.array([2.5, 0.9, 0.3])
    h, y = initial_features(4, 6, 5, omega0, seed=3)
    np.testing.assert_allclose(_independent_omega(h, y, 4), omega0, rtol=1e-12)
    dev = h - np.stack([h[y == k].mean(axis=0) for k in range(4)])[y]
    np.testing.assert_allclose(dev.T @ dev / h.shape[0], np.eye(5), atol=1e-13)


def test_ode_solution_satisfies_the_ode() -> None:
    c, n = 4, 40
    omega0 = np.array([3.0, 0.5, 0.05])
    times = np.array([0.0, 1.0, 30.0, 1e3, 1e5])
    om = ode_snr_trajectory(omega0, times, c, n)
    np.testing.assert_allclose(om[0], omega0, rtol=1e-14)
    dt = 1e-4
    for t in times[1:]:
        plus = ode_snr_trajectory(omega0, np.array([t + dt, t - dt]), c, n)
        deriv = (plus[0] - plus[1]) / (2 * dt)
        here = ode_snr_trajectory(omega0, np.array([t]), c, n)[0]
        np.testing.assert_allclose(deriv, here / (n * (c + here**2)), rtol=1e-5)


def test_renormalized_flow_follows_exact_dynamics_and_equalizes() -> None:
    c, n, d = 4, 8, 5
    h, y = initial_features(c, n, d, np.array([2.0, 0.6, 0.2]), seed=1)
    flow = renormalized_flow(h, y, steps=3000, rel_step=3e-3, num_records=20)
    om = flow["omega"]
    rec = np.sort(flow["recurrence_omega"], axis=1)[:, ::-1]
    np.testing.assert_allclose(om, rec, rtol=1e-9)  # the exact discrete dynamics
    np.testing.assert_allclose(om, flow["ode_omega"], rtol=5e-3)  # the flow, to O(step)
    assert np.all(np.diff(om, axis=0) > 0)  # every ω_j grows
    assert om[-1].min() > 20 * om[0].max()
    ratio = om[:, -1] / om[:, 0]
    assert ratio[0] < 0.2 and ratio[-1] > 0.999  # and they equalize
    assert flow["etf_distance"][-1] < 1e-3 * flow["etf_distance"][0]
    assert np.all(np.diff(flow["loss"]) < 0)
    np.testing.assert_allclose(flow["loss"], 0.5 * np.sum(1.0 / (c + om**2), axis=1), rtol=1e-9)


def _fake_run(tmp_path, with_decomposition: bool = True):
    """A run directory, written by the public RunWriter, whose measurements come from a real
    least-squares descent."""
    rng = np.random.default_rng(0)
    c, d = 3, 4
    h, y = balanced_features(rng, c=c, n=10, d=d)
    w, b = np.zeros((c, d)), np.zeros(c)
    rows = []
    run = tmp_path / ("mse" if with_decomposition else "ce")
    config = {"data": {"dataset": "toy"}, "model": {"model": "linear", "width": 4},
              "optim": {"optimizer": "gd", "lr": 0.02, "weight_decay": 1e-3}}
    with RunWriter(run, config, epochs=30) as writer:
        for epoch in range(1, 31):
            r = h @ w.T + b - np.eye(c)[y]
            w -= 0.02 * (r.T @ h / len(y) + 1e-3 * w)
            b -= 0.02 * (r.mean(axis=0) + 1e-3 * b)
            row = {}
            if with_decomposition:
                dec = mse_decomposition(h, y, w, b, 1e-3)
                row["mse_decomposition"] = {k: dec[k] for k in ("loss", "nc1", "nc2_3",
                                                                "ls_perp")}
            writer.log_measurement(epoch, train_loss=0.0, **row)
            rows.append(row)
    return run, rows


def test_plot_mse_decomposition_from_a_run_dir(tmp_path) -> None:
    run, rows = _fake_run(tmp_path)
    data = read_mse_decomposition(run)
    np.testing.assert_array_equal(data["epoch"], np.arange(1, 31))
    np.testing.assert_array_equal(data["ls_perp"],
                                  [r["mse_decomposition"]["ls_perp"] for r in rows])
    fig = mse_decomposition_figure(data, run_label(run))
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.lines[3].get_ydata(), data["ls_perp"])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert run_label(run) == "toy, linear, gd lr 0.02, weight decay 0.001"
    # a row whose decomposition failed (imbalanced classes) is skipped
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 31, "mse_decomposition": {"error": "imbalanced"}}) + "\n")
    assert len(read_mse_decomposition(run)["epoch"]) == 30
    ce_run, _ = _fake_run(tmp_path, with_decomposition=False)
    with pytest.raises(ValueError, match="MSE"):
        read_mse_decomposition(ce_run)
    with pytest.raises(FileNotFoundError):
        read_mse_decomposition(tmp_path / "nothing")


def test_cli_central_path(tmp_path) -> None:
    run, _ = _fake_run(tmp_path)
    assert main(["theory", "central-path", "--steps", "600", "--per-class", "6",
                 "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json"),
                 "--run", str(run)]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert abs(res["objective"] - res["closed_form_objective"]) < TOL
    assert res["recurrence_max_rel_error"] < 1e-9
    assert res["invariance_error"] < TOL
    assert res["metrics"]["num_classes"] == 4
    assert {"nc1", "self_duality"} <= set(res["metrics"])
    assert sorted(res["figures"]) == [str(tmp_path / "o" / "theory-central-path-flow.png"),
                                      str(tmp_path / "o" / "theory-central-path-mse-run.png")]
    for fig in res["figures"]:
        assert open(fig, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert res["run_decomposition_last"]["epoch"] == 30


def test_decomposition_of_a_real_tiny_mse_run(tmp_path) -> None:
    """`ncollapse train` with the MSE loss records the decomposition; the plot reads it."""
    cfg = load_config(overrides={
        "dataset": "digits", "model": "mlp", "width": 32, "depth": 2, "loss": "mse",
        "per_class": 20, "lr": 0.05, "weight_decay": 5e-4, "batch_size": 50, "epochs": 4,
        "schedule": "constant", "device": "cpu", "num_measurements": 4, "measure_test": False,
    })
    run = tmp_path / "run"
    train(cfg, out=run)
    data = read_mse_decomposition(run)
    assert len(data["epoch"]) >= 2
    np.testing.assert_allclose(data["nc1"] + data["nc2_3"] + data["ls_perp"], data["loss"],
                               rtol=1e-12)
    assert np.all(data["ls_perp"] >= 0) and np.all(data["nc1"] > 0)
    assert len(mse_decomposition_figure(data, run_label(run)).axes[0].lines) == 4
