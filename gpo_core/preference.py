"""From sequence log-probs to the GPO objective and the per-batch metrics trainers report."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpo_core.losses import LossFunction, gpo_loss


def log_ratio_difference(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
) -> torch.Tensor:
    """``rho = log pi/pi_ref (chosen) - log pi/pi_ref (rejected)``, one value per pair."""
    return (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)


@dataclass
class PreferenceOutput:
    loss: torch.Tensor  # scalar, differentiable
    rho: torch.Tensor  # [B]
    metrics: dict[str, float]


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    f: str | LossFunction,
) -> PreferenceOutput:
    """GPO loss ``mean(f(beta * rho))`` plus the metrics of DPO-style trainers.

    Implicit rewards are ``beta * log pi/pi_ref`` of each response; the margin is their mean
    difference (= ``beta * mean(rho)``); accuracy counts pairs with ``rho > 0``.
    """
    rho = log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    loss = gpo_loss(rho, beta, f)
    with torch.no_grad():
        chosen_reward = beta * (policy_chosen - reference_chosen)
        rejected_reward = beta * (policy_rejected - reference_rejected)
        metrics = {
            "loss": float(loss),
            "rho_mean": float(rho.mean()),
            "rho_std": float(rho.std()) if rho.numel() > 1 else 0.0,
            "accuracy": float((rho > 0).float().mean()),
            "reward_chosen": float(chosen_reward.mean()),
            "reward_rejected": float(rejected_reward.mean()),
            "margin": float((chosen_reward - rejected_reward).mean()),
        }
    return PreferenceOutput(loss, rho, metrics)
