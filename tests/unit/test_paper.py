"""The paper's claims reproduced: the bandit of section 4.1 and the Gaussian counterexample of 4.2."""

import math

import numpy as np
import pytest

from gpo_core.paper.bandit import run_all
from gpo_core.paper.gaussians import gaussian_curves, local_minima, log_ref


@pytest.fixture(scope="module")
def bandit_runs():
    return run_all(beta=1.0, steps=2000, seed=0)


@pytest.mark.parametrize("name", ["logistic", "exponential", "savage"])
def test_case_one_losses_drive_pi_y1_towards_one(bandit_runs, name: str) -> None:
    run = bandit_runs[name]
    pi1 = [point["pi"][0] for point in run.trajectory]
    assert run.final_pi[0] > 0.95
    assert pi1[-1] > pi1[len(pi1) // 2] > pi1[0]  # still climbing


@pytest.mark.parametrize("name", ["hinge", "square", "truncated_quadratic"])
def test_case_two_losses_stay_bounded_and_closer_to_reference(bandit_runs, name: str) -> None:
    run = bandit_runs[name]
    assert run.final_pi[0] < 0.75
    # closer to pi_ref than every case-I loss, in KL
    assert run.trajectory[-1]["kl"] < min(bandit_runs[n].trajectory[-1]["kl"] for n in ("logistic", "savage"))


def test_square_loss_reaches_its_closed_form_optimum(bandit_runs) -> None:
    """IPO's minimiser: theta1 - theta2 = theta2 - theta3 = 2/3 (least squares on the 3 pairs)."""
    weights = np.exp([2 / 3, 0.0, -2 / 3])
    assert bandit_runs["square"].final_pi[0] == pytest.approx(weights[0] / weights.sum(), abs=0.02)


def test_the_traced_square_loss_is_eq_6_over_the_datasets_pairs(bandit_runs) -> None:
    """At IPO's optimum the log-ratios are (c + 2/3, c, c - 2/3): rho is 2/3 on (y1, y2) and
    (y2, y3) and 4/3 on (y1, y3), so Eq. 6 is ((2/3)^2 + (2/3)^2 + (4/3)^2) / 3 / 2 = 4/9 (Adam on
    minibatches ends near it; two independent draws of the pairs' actions would give 2/3 of it)."""
    point = bandit_runs["square"].trajectory[-1]
    assert point["square_loss"] == pytest.approx(4 / 9, rel=0.1)
    log_ratio = np.log(point["pi"]) - np.log(1 / 3)
    rho = [log_ratio[0] - log_ratio[1], log_ratio[1] - log_ratio[2], log_ratio[0] - log_ratio[2]]
    assert point["square_loss"] == pytest.approx(np.mean(np.square(rho)) / 2, rel=1e-9)
    assert bandit_runs["logistic"].trajectory[0]["square_loss"] == 0.0


def test_bandit_trajectory_is_a_distribution(bandit_runs) -> None:
    for run in bandit_runs.values():
        assert run.trajectory[0]["pi"] == pytest.approx([1 / 3] * 3)
        assert all(math.isclose(sum(p["pi"]), 1.0, rel_tol=1e-9) for p in run.trajectory)


@pytest.fixture(scope="module")
def curves():
    return gaussian_curves(seed=0)


def test_gaussian_counterexample_seed_0(curves) -> None:
    away = [c for c in curves.local_minima["square_loss_integrated"] if abs(c) > 0.05]
    assert away, curves.local_minima
    assert curves.local_minima["kl_integrated"] == [0.0]
    assert curves.local_minima["kl_sampled"] == [0.0]
    assert curves.is_counterexample


def test_gaussian_sampled_and_integrated_curves_agree(curves) -> None:
    kl_s, kl_i = np.array(curves.kl_sampled), np.array(curves.kl_integrated)
    sq_s, sq_i = np.array(curves.square_loss_sampled), np.array(curves.square_loss_integrated)
    assert np.abs(kl_s - kl_i).max() < 0.1 * kl_i.max()
    assert np.abs(sq_s - sq_i).max() < 0.15 * sq_i.max()
    assert kl_i[len(kl_i) // 2] == pytest.approx(0.0, abs=1e-9)  # c = 0


def test_reference_density_integrates_to_one() -> None:
    y = np.linspace(-3, 3, 60001)
    assert np.exp(log_ref(y)).sum() * (y[1] - y[0]) == pytest.approx(1.0, abs=1e-6)


def test_local_minima_finder() -> None:
    c = np.linspace(-1, 1, 5)
    assert local_minima(c, np.array([3.0, 1.0, 2.0, 0.5, 1.0])) == [-0.5, 0.5]
