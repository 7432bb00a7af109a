"""Section 4.1, Fig. 3 (setup of Azar et al. 2023): which losses keep the policy near the reference.

Three actions, a softmax policy ``pi = softmax(theta)`` starting at the uniform reference, and an
offline dataset of the pairs (y1 > y2), (y2 > y3), (y1 > y3), drawn uniformly. With case-I losses
(logistic, exponential, Savage) nothing stops ``rho`` from growing, so pi(y1) -> 1 however large
beta is; case-II losses (hinge, square, truncated quadratic) stop at a finite margin and keep
pi(y1) bounded away from 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from gpo_core.losses import BUILTIN_LOSSES, gpo_loss, resolve_loss
from gpo_core.regularization import categorical_kl, mu_weighted_square_loss

PAIRS = torch.tensor([[0, 1], [1, 2], [0, 2]])  # (winner, loser)


def dataset_square_loss(log_ratio: torch.Tensor) -> float:
    """The paper's Eq. 6 on this dataset: ``rho^2 / 2`` averaged over its pairs (y_w, y_l), with
    ``rho = h(y_w) - h(y_l)`` and ``h = log pi - log pi_ref``. (Not over two actions drawn
    independently from the pairs' actions: those include y = y', where rho is 0.)"""
    rho = log_ratio[PAIRS[:, 0]] - log_ratio[PAIRS[:, 1]]
    return float(mu_weighted_square_loss(rho).mean)


@dataclass
class BanditRun:
    loss: str
    beta: float
    final_pi: list[float]
    trajectory: list[dict]  # {"step", "pi": [3], "kl", "square_loss"}

    def to_dict(self) -> dict:
        return asdict(self)


def run_bandit(
    loss: str,
    beta: float = 1.0,
    steps: int = 2000,
    lr: float = 0.01,
    batch_size: int = 6,
    seed: int = 0,
    record_every: int = 20,
) -> BanditRun:
    """Adam on mean f(beta * rho) over minibatches of dataset pairs; pi recorded along the way."""
    if steps < 1 or batch_size < 1 or record_every < 1:
        raise ValueError("steps, batch_size and record_every must be >= 1")
    f = resolve_loss(loss)
    generator = torch.Generator().manual_seed(seed)
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    log_ref = torch.full((3,), 1 / 3, dtype=torch.float64).log()
    optimizer = torch.optim.Adam([theta], lr=lr)
    trajectory: list[dict] = []

    def record(step: int) -> None:
        with torch.no_grad():
            log_pi = torch.log_softmax(theta, -1)
            trajectory.append(
                {
                    "step": step,
                    "pi": log_pi.exp().tolist(),
                    "kl": float(categorical_kl(log_pi, log_ref)),
                    "square_loss": dataset_square_loss(log_pi - log_ref),
                }
            )

    record(0)
    for step in range(1, steps + 1):
        batch = PAIRS[torch.randint(len(PAIRS), (batch_size,), generator=generator)]
        log_ratio = torch.log_softmax(theta, -1) - log_ref
        rho = log_ratio[batch[:, 0]] - log_ratio[batch[:, 1]]
        optimizer.zero_grad()
        gpo_loss(rho, beta, f).backward()
        optimizer.step()
        if step % record_every == 0 or step == steps:
            record(step)
    return BanditRun(f.name, beta, trajectory[-1]["pi"], trajectory)


def run_all(
    losses: list[str] | None = None, beta: float = 1.0, steps: int = 2000, seed: int = 0, **kwargs
) -> dict[str, BanditRun]:
    """One run per loss (default: every built-in), same data order for all."""
    names = losses or list(BUILTIN_LOSSES)
    return {run.loss: run for run in (run_bandit(n, beta, steps, seed=seed, **kwargs) for n in names)}
