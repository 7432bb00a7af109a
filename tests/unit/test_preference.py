"""rho, the GPO loss on log-probs and the per-batch metrics, against hand computation."""

import math

import pytest
import torch

from gpo_core.preference import log_ratio_difference, preference_loss


def test_rho_and_metrics_by_hand() -> None:
    policy_chosen = torch.tensor([-10.0, -4.0, -7.0], dtype=torch.float64, requires_grad=True)
    policy_rejected = torch.tensor([-12.0, -3.0, -7.5], dtype=torch.float64, requires_grad=True)
    reference_chosen = torch.tensor([-11.0, -4.5, -7.0], dtype=torch.float64)
    reference_rejected = torch.tensor([-11.0, -3.0, -7.0], dtype=torch.float64)
    beta = 0.5
    # rho = (pc - rc) - (pr - rr): (1 - (-1)) = 2, (0.5 - 0) = 0.5, (0 - (-0.5)) = 0.5
    rho = [2.0, 0.5, 0.5]
    out = preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta, "logistic")
    assert out.rho.tolist() == rho
    expected_loss = sum(math.log1p(math.exp(-beta * r)) for r in rho) / 3
    assert out.metrics["loss"] == pytest.approx(expected_loss, rel=1e-12)
    assert out.metrics["rho_mean"] == pytest.approx(1.0)
    assert out.metrics["rho_std"] == pytest.approx(math.sqrt(((1.0) ** 2 + 0.25 + 0.25) / 2))
    assert out.metrics["accuracy"] == 1.0
    assert out.metrics["reward_chosen"] == pytest.approx(beta * (1.0 + 0.5 + 0.0) / 3)
    assert out.metrics["reward_rejected"] == pytest.approx(beta * (-1.0 + 0.0 - 0.5) / 3)
    assert out.metrics["margin"] == pytest.approx(beta * 1.0)

    out.loss.backward()
    # d loss / d policy_chosen_i = beta * f'(beta rho_i) / n, f' = -sigmoid(-x)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected_grad = [beta * -sig(-beta * r) / 3 for r in rho]
    torch.testing.assert_close(policy_chosen.grad, torch.tensor(expected_grad, dtype=torch.float64))
    torch.testing.assert_close(policy_rejected.grad, -torch.tensor(expected_grad, dtype=torch.float64))


def test_accuracy_counts_strictly_positive_rho() -> None:
    zeros = torch.zeros(4)
    rho = log_ratio_difference(torch.tensor([1.0, 0.0, -1.0, 2.0]), zeros, zeros, zeros)
    out = preference_loss(rho, zeros, zeros, zeros, 1.0, "hinge")
    assert out.metrics["accuracy"] == 0.5


def test_rho_within_float_noise_of_zero_is_a_tie_not_a_correct_pair() -> None:
    """The first step, policy = pi_ref: rho is noise of either sign, and counts nothing."""
    from gpo_core.preference import TIE_TOLERANCE

    zeros = torch.zeros(4)
    noise = torch.tensor([3e-6, -2e-6, 5e-4, 0.9 * TIE_TOLERANCE])
    assert preference_loss(noise, zeros, zeros, zeros, 1.0, "logistic").metrics["accuracy"] == 0.0
    learnt = torch.tensor([3e-6, 2 * TIE_TOLERANCE, 0.5, -0.5])
    assert preference_loss(learnt, zeros, zeros, zeros, 1.0, "logistic").metrics["accuracy"] == 0.5


def test_sums_over_micro_batches_give_the_metrics_of_the_whole_batch() -> None:
    """What the loop does per step: add the sums of each micro-batch (and worker), then divide once."""
    from gpo_core.preference import metrics_from_sums, preference_sums

    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(10) * 3 for _ in range(4))
    beta = 0.3
    parts = [slice(0, 3), slice(3, 4), slice(4, 10)]
    sums = sum(preference_sums(pc[s], pr[s], rc[s], rr[s], beta, "savage") for s in parts)
    metrics = metrics_from_sums(sums.tolist())
    rho = (pc - rc) - (pr - rr)
    x = beta * rho.double()
    savage = 1 / (1 + torch.exp(x)) ** 2  # the paper's Savage loss, computed here independently
    assert metrics["loss"] == pytest.approx(float(savage.mean()), rel=1e-6)
    assert metrics["rho_mean"] == pytest.approx(float(rho.mean()), rel=1e-5)
    assert metrics["rho_std"] == pytest.approx(float(rho.std()), rel=1e-5)
    assert metrics["accuracy"] == float((rho > 0).float().mean())
    assert metrics["margin"] == pytest.approx(beta * float(rho.mean()), rel=1e-5)
