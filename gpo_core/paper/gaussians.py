"""Section 4.2, Fig. 4, Appendix A.2: the offline square loss is not the KL.

pi_ref = 0.3 N(-0.8, 0.1^2) + 0.4 N(0, 0.1^2) + 0.3 N(0.8, 0.1^2); mu = (1/3) sum_i N(u_i, 0.05^2)
with u_i ~ U[-1, 1] (seeded); pi_theta = pi_ref shifted by c. KL(pi_theta || pi_ref) grows with |c|
and has its only minimum at c = 0, but the mu-weighted square loss E_mu[rho^2/2] can have a local
minimum elsewhere: minimising it offline can pull pi_theta away from pi_ref. Both curves are
computed twice: from samples (the estimate a trainer sees) and by numerical integration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import logsumexp

REF_WEIGHTS = np.array([0.3, 0.4, 0.3])
REF_MEANS = np.array([-0.8, 0.0, 0.8])
REF_STD = 0.1
MU_STD = 0.05
MU_COMPONENTS = 3


@dataclass
class GaussianCurves:
    seed: int
    mu_means: list[float]
    c: list[float]
    kl_sampled: list[float]
    kl_integrated: list[float]
    square_loss_sampled: list[float]
    square_loss_integrated: list[float]
    local_minima: dict[str, list[float]]  # curve name -> interior local minima in c

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_counterexample(self) -> bool:
        """The square loss has a local minimum away from c = 0 while the KL has none there."""
        away = lambda name: [c for c in self.local_minima[name] if abs(c) > 0.05]  # noqa: E731
        return bool(away("square_loss_integrated")) and not away("kl_integrated")


def log_normal_mixture(y: np.ndarray, weights: np.ndarray, means: np.ndarray, std: float) -> np.ndarray:
    z = (y[..., None] - means) / std
    return logsumexp(np.log(weights) - 0.5 * z**2 - np.log(std * np.sqrt(2 * np.pi)), axis=-1)


def log_ref(y: np.ndarray) -> np.ndarray:
    return log_normal_mixture(y, REF_WEIGHTS, REF_MEANS, REF_STD)


def mu_means(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, MU_COMPONENTS)


def local_minima(c: np.ndarray, values: np.ndarray) -> list[float]:
    """Interior grid points strictly lower than both neighbours."""
    inner = (values[1:-1] < values[:-2]) & (values[1:-1] < values[2:])
    return [round(float(v), 6) for v in c[1:-1][inner]]


def gaussian_curves(seed: int = 0, samples: int = 2000, points: int = 201) -> GaussianCurves:
    rng = np.random.default_rng([seed, 1])  # sampling stream, independent of mu's
    means = mu_means(seed)
    c = np.linspace(-1.0, 1.0, points)

    def log_ratio(y: np.ndarray) -> np.ndarray:  # h_c(y) = log pi_ref(y - c) - log pi_ref(y), [C, N]
        return log_ref(y[None, :] - c[:, None]) - log_ref(y)[None, :]

    # Sampled: one set of draws reused for every c (common random numbers keep curves smooth in c).
    component = rng.choice(3, size=samples, p=REF_WEIGHTS)
    ref_draws = rng.normal(REF_MEANS[component], REF_STD)
    policy_draws = ref_draws[None, :] + c[:, None]  # y ~ pi_theta = pi_ref shifted by c
    kl_sampled = (log_ref(policy_draws - c[:, None]) - log_ref(policy_draws)).mean(axis=1)
    first = rng.normal(means[rng.integers(3, size=samples)], MU_STD)
    second = rng.normal(means[rng.integers(3, size=samples)], MU_STD)
    square_sampled = 0.5 * ((log_ratio(first) - log_ratio(second)) ** 2).mean(axis=1)

    # Integrated on a fine grid (the densities are negligible outside [-3, 3]).
    y = np.linspace(-3.0, 3.0, 6001)
    dy = y[1] - y[0]
    h = log_ratio(y)
    policy_density = np.exp(log_ref(y[None, :] - c[:, None]))
    kl_integrated = (policy_density * h).sum(axis=1) * dy
    mu_density = np.exp(log_normal_mixture(y, np.full(MU_COMPONENTS, 1 / MU_COMPONENTS), means, MU_STD))
    mean_h = (mu_density * h).sum(axis=1) * dy
    square_integrated = (mu_density * h**2).sum(axis=1) * dy - mean_h**2  # = Var_mu(h)

    curves = {
        "kl_sampled": kl_sampled,
        "kl_integrated": kl_integrated,
        "square_loss_sampled": square_sampled,
        "square_loss_integrated": square_integrated,
    }
    return GaussianCurves(
        seed=seed,
        mu_means=[float(m) for m in means],
        c=[float(v) for v in c],
        **{name: [float(v) for v in values] for name, values in curves.items()},
        local_minima={name: local_minima(c, values) for name, values in curves.items()},
    )
