"""The offline regularizer, the KL estimator and the identity of Eq. (8)."""

import math

import pytest
import torch

from gpo_core.regularization import (
    categorical_kl,
    categorical_square_loss,
    kl_from_samples,
    mu_weighted_square_loss,
)


def test_eq8_onpolicy_square_loss_gradient_is_twice_kl_gradient() -> None:
    """grad_theta E_{y,y'~sg(pi)}[(h(y)-h(y'))^2/2] = 2 grad_theta KL(pi_theta || pi_ref), exactly."""
    torch.manual_seed(0)
    for _ in range(5):
        theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
        log_ref = torch.log_softmax(torch.randn(6, dtype=torch.float64), -1)
        log_pi = torch.log_softmax(theta, -1)
        (kl_grad,) = torch.autograd.grad(categorical_kl(log_pi, log_ref), theta)
        log_pi = torch.log_softmax(theta, -1)
        square = categorical_square_loss(log_pi.exp().detach(), log_pi - log_ref)
        (square_grad,) = torch.autograd.grad(square, theta)
        torch.testing.assert_close(square_grad, 2 * kl_grad, rtol=1e-12, atol=1e-14)


def test_eq8_does_not_hold_off_policy() -> None:
    """With a fixed mu that is not pi_theta the gradients differ: the identity is on-policy only."""
    torch.manual_seed(1)
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    log_ref = torch.log_softmax(torch.randn(6, dtype=torch.float64), -1)
    mu = torch.softmax(torch.randn(6, dtype=torch.float64), -1)
    (kl_grad,) = torch.autograd.grad(categorical_kl(torch.log_softmax(theta, -1), log_ref), theta)
    (square_grad,) = torch.autograd.grad(categorical_square_loss(mu, torch.log_softmax(theta, -1) - log_ref), theta)
    assert (square_grad - 2 * kl_grad).abs().max() > 1e-3


def test_categorical_square_loss_is_variance_of_log_ratio() -> None:
    mu = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    h = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    variance = (mu * h**2).sum() - (mu * h).sum() ** 2
    torch.testing.assert_close(categorical_square_loss(mu, h), variance)


def test_kl_estimator_from_samples_against_exact_kl() -> None:
    generator = torch.Generator().manual_seed(0)
    log_pi = torch.log_softmax(torch.tensor([2.0, 0.5, -1.0, 0.0], dtype=torch.float64), -1)
    log_ref = torch.log_softmax(torch.zeros(4, dtype=torch.float64), -1)
    samples = torch.multinomial(log_pi.exp(), 20000, replacement=True, generator=generator)
    estimate = kl_from_samples(log_pi[samples], log_ref[samples])
    exact = float(categorical_kl(log_pi, log_ref))
    assert estimate.n == 20000
    assert abs(estimate.mean - exact) < 4 * estimate.stderr
    # stderr is the sample std of the log-ratio over sqrt(n)
    h = (log_pi - log_ref)[samples]
    assert estimate.stderr == pytest.approx(float(h.std()) / math.sqrt(20000))


def test_mu_weighted_square_loss_from_pairs_against_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    h = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    y = torch.multinomial(mu, 40000, replacement=True, generator=generator)
    y2 = torch.multinomial(mu, 40000, replacement=True, generator=generator)
    estimate = mu_weighted_square_loss(h[y] - h[y2])
    assert abs(estimate.mean - float(categorical_square_loss(mu, h))) < 4 * estimate.stderr


def test_estimators_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        kl_from_samples(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="no samples"):
        mu_weighted_square_loss(torch.zeros(0))
