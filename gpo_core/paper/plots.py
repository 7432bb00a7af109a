"""Figures of the paper's analyses (matplotlib, written to PNG without a display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from gpo_core.analysis import taylor_ratio
from gpo_core.losses import LossFunction, derivatives_at_zero, resolve_loss
from gpo_core.paper.bandit import BanditRun
from gpo_core.paper.gaussians import GaussianCurves


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_losses(losses: Sequence[str | LossFunction], path: str | Path) -> Path:
    """Fig. 1/2: f(x); -f'(x) (case I tails never reach 0, case II do); and each f rescaled by
    its Taylor coefficients, (f(x) - f(0)) / |f'(0)| against -x + ratio * x^2 / 2."""
    x = torch.linspace(-3, 4, 701, dtype=torch.float64, requires_grad=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for spec in losses:
        f = resolve_loss(spec)
        y = f(x)
        (slope,) = torch.autograd.grad(y.sum(), x)
        f0, f1, _ = derivatives_at_zero(f.expr)
        xs = x.detach()
        axes[0].plot(xs, y.detach(), label=f.name)
        axes[1].plot(xs, -slope, label=f.name)
        line = axes[2].plot(xs, (y.detach() - f0) / abs(f1), label=f.name)
        quadratic = -xs + taylor_ratio(f) * xs**2 / 2
        axes[2].plot(xs, quadratic, linestyle=":", color=line[0].get_color())
    axes[0].set(title="f(x)", xlabel="x = beta * rho", ylim=(-0.2, 5))
    axes[1].set(title="-f'(x): the push on rho", xlabel="x", ylim=(-0.5, 2.5))
    axes[2].set(title="(f(x) - f(0)) / |f'(0)| and its Taylor quadratic (dotted)", xlabel="x", ylim=(-2, 3))
    axes[2].set_xlim(-2, 2)
    for ax in axes:
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bandit(runs: dict[str, BanditRun], path: str | Path) -> Path:
    """Fig. 3: pi(y) along training, one panel per loss."""
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.2), sharey=True, squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items(), strict=True):
        steps = [point["step"] for point in run.trajectory]
        for action in range(3):
            ax.plot(steps, [point["pi"][action] for point in run.trajectory], label=f"pi(y{action + 1})")
        ax.axhline(1 / 3, color="grey", linestyle=":", linewidth=0.8)
        ax.set(title=f"{name}, beta={run.beta:g}", xlabel="step", ylim=(0, 1))
    axes[0][0].set_ylabel("probability")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def plot_gaussians(curves: GaussianCurves, path: str | Path) -> Path:
    """Fig. 4: KL and mu-weighted square loss against the shift c, sampled and integrated."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, name in zip(axes, ("kl", "square_loss"), strict=True):
        ax.plot(curves.c, getattr(curves, f"{name}_integrated"), label="integrated")
        ax.plot(curves.c, getattr(curves, f"{name}_sampled"), linestyle="--", label="2000 samples")
        for c in curves.local_minima[f"{name}_integrated"]:
            ax.axvline(c, color="red", linewidth=0.6, linestyle=":")
        ax.set(xlabel="shift c", title=name.replace("_", " ") + " (local minima in red)")
        # Log scales, as the paper draws them; symlog because both curves reach 0 (at c = 0 for
        # the KL), where a plain log axis has no place.
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.suptitle(f"mu means {[round(m, 2) for m in curves.mu_means]} (seed {curves.seed})")
    return _save(fig, path)
