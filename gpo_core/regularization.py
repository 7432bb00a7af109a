"""The offline regularizer and the KL it stands in for (section 4 of the paper).

Every smooth GPO loss is, near the origin, IPO: its regularizing part is the mu-weighted square
loss ``E_{(y, y') ~ mu}[rho^2 / 2]``, measured on offline pairs from the behaviour policy mu.
RLHF's regularizer is instead ``KL(pi_theta || pi_ref)``, measured on samples of pi_theta.

Eq. (8): with mu = pi_theta (samples held fixed, i.e. under stop-gradient), the gradient of the
square loss is the on-policy KL gradient. Writing ``h(y) = log pi_theta(y)/pi_ref(y)``:
``grad E_{y,y'~sg(pi)}[(h(y) - h(y'))^2 / 2] = 2 (E[h grad h] - E[h] E[grad h]) = 2 E[h grad log pi]
= 2 grad KL`` (using ``E_pi[grad log pi] = 0``). The factor 2 is from the 1/2 convention; the
directions agree exactly. Offline, mu != pi_theta, and the two can disagree (the mixture-of-Gaussians
counterexample in ``gpo_core.paper.gaussians``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo mean with its standard error."""

    mean: float
    stderr: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def _estimate(samples: torch.Tensor) -> Estimate:
    samples = samples.detach().double().flatten()
    n = samples.numel()
    if n == 0:
        raise ValueError("no samples to estimate from")
    stderr = float(samples.std() / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(float(samples.mean()), stderr, n)


def mu_weighted_square_loss(rho: torch.Tensor) -> Estimate:
    """``E_mu[rho^2 / 2]`` from offline pairs drawn from mu (e.g. held-out preference pairs)."""
    return _estimate(rho**2 / 2)


def kl_from_samples(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> Estimate:
    """``KL(pi_theta || pi_ref)`` from sequences sampled from pi_theta: mean of log pi - log pi_ref.

    Unbiased; a single sample can be negative, the mean converges to the (non-negative) KL.
    """
    if policy_logprobs.shape != reference_logprobs.shape:
        raise ValueError(
            f"policy and reference log-probs differ in shape: {tuple(policy_logprobs.shape)} "
            f"vs {tuple(reference_logprobs.shape)}"
        )
    return _estimate(policy_logprobs - reference_logprobs)


def categorical_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Exact ``KL(p || q)`` for categorical distributions given as log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def categorical_square_loss(mu: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """Exact ``E_{y, y' ~ mu}[(h(y) - h(y'))^2 / 2]`` for a categorical mu; equals ``Var_mu(h)``."""
    diff = log_ratio.unsqueeze(-1) - log_ratio.unsqueeze(-2)
    weights = mu.unsqueeze(-1) * mu.unsqueeze(-2)
    return (weights * diff**2).sum((-1, -2)) / 2
