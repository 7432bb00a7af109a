"""The paper's analysis of a loss ``f``: Taylor view, convexity and tail class.

Taylor view (Appendix B.2). Near ``rho = 0``,
``f(beta*rho) ~ f(0) + |f'(0)| * beta * (-rho + ratio * beta * rho^2 / 2)`` with
``ratio = f''(0) / |f'(0)|``. The square loss has ratio 1, so GPO with ``f`` at ``beta`` behaves
like IPO at ``beta' = beta * ratio``: the ratio sets the effective regularization strength.

Tail class (section 4.1). Case I: ``f' < 0`` everywhere, so the loss keeps pushing ``rho`` up
and the gradient only vanishes at infinity (logistic, exponential, Savage). Case II: ``f'``
reaches 0 or turns positive at a finite ``x`` (hinge, square, truncated quadratic), which bounds
how far the policy moves from the reference on the data.

``f'(0)``, ``f''(0)`` and the non-smooth points are symbolic (sympy). Convexity and the tail class
are checked numerically in float64 on ``x`` in [-50, 50] (the range where built-ins are finite in
float32); behaviour outside it is not examined. An ``f'`` that rounds to 0 in float64 inside the range
counts as reaching 0 (``-tanh(x)``: ``f' = tanh(x)^2 - 1`` is exactly 0 in float64 beyond x ~ 19).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import sympy as sp
import torch

from gpo_core.formula import X, compile_to_torch, kinks
from gpo_core.losses import LossFunction, LossSpecError, derivatives_at_zero, resolve_loss

GRID_LIMIT = 50.0
GRID_STEP = 0.005
_CONVEXITY_RTOL = 1e-10


@dataclass(frozen=True)
class LossProperties:
    name: str
    formula: str
    fprime0: float
    fsecond0: float
    ratio: float  # f''(0) / |f'(0)|: GPO(beta) ~ IPO(beta * ratio)
    convex: bool
    nonconvex_interval: tuple[float, float] | None  # where a negative curvature was found
    tail: str  # "I" or "II"
    fprime_zero_at: float | None  # case II: the first x where f'(x) >= 0
    smooth_at_zero: bool
    non_smooth_at: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _grid() -> torch.Tensor:
    n = round(2 * GRID_LIMIT / GRID_STEP) + 1
    return torch.linspace(-GRID_LIMIT, GRID_LIMIT, n, dtype=torch.float64)


def _tail(f: LossFunction) -> tuple[str, float | None]:
    """Uses the symbolic f' compiled in stable form: autograd through ``sigmoid(-x)**2`` rounds
    Savage's f'(-50) ~ -4e-22 to 0, which would misclassify it."""
    fprime = compile_to_torch(sp.diff(f.expr, X))
    x = _grid()
    with torch.no_grad():
        slope = fprime(x)
    nonnegative = (slope >= 0).nonzero()
    if len(nonnegative) == 0:
        return "I", None
    i = int(nonnegative[0])
    if i == 0:
        return "II", float(x[0])
    lo, hi = float(x[i - 1]), float(x[i])  # f'(lo) < 0 <= f'(hi): bisect to the crossing
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(fprime(torch.tensor([mid], dtype=torch.float64))) >= 0:
            hi = mid
        else:
            lo = mid
    return "II", round(hi, 9)


def _convexity(f: LossFunction) -> tuple[bool, tuple[float, float] | None]:
    """Midpoint test ``f(x-h) - 2f(x) + f(x+h) >= 0`` on the grid; it also sees kinks.

    Curvature below float64's resolution of the second difference is not seen, so the reported
    interval can be narrower than the true one (Savage: true (-inf, -ln 2), found ~[-11.7, -0.695]).
    """
    x = _grid()
    with torch.no_grad():
        y = f(x)
    left, mid, right = y[:-2], y[1:-1], y[2:]
    second_difference = left - 2 * mid + right
    scale = left.abs() + 2 * mid.abs() + right.abs()
    finite = torch.isfinite(second_difference) & torch.isfinite(scale)
    bad = finite & (second_difference < -_CONVEXITY_RTOL * scale)
    if not bool(bad.any()):
        return True, None
    where = x[1:-1][bad]
    return False, (round(float(where.min()), 3), round(float(where.max()), 3))


def analyze(spec: str | LossFunction) -> LossProperties:
    """Every property the paper uses to compare losses, computed for ``spec``."""
    f = resolve_loss(spec)
    _, f1, f2 = derivatives_at_zero(f.expr)
    ratio = f2 / abs(f1)
    kink_points = kinks(f.expr)
    convex, nonconvex = _convexity(f)
    tail, zero_at = _tail(f)
    notes = []
    if kink_points:
        where = ", ".join(f"x = {k:g}" for k in kink_points)
        notes.append(f"not smooth at {where}; smooth at 0")
    if ratio == 0:
        notes.append("f''(0) = 0: no quadratic term at the origin, so no IPO-equivalent beta")
    if nonconvex is not None:
        lo, hi = nonconvex
        notes.append(f"not convex on R: negative curvature found on [{lo:g}, {hi:g}]")
    if tail == "I":
        notes.append("case I: f' < 0 everywhere on the grid; the gradient only vanishes as x grows")
    else:
        notes.append(f"case II: f' reaches 0 at x = {zero_at:g}")
    return LossProperties(
        name=f.name,
        formula=f.formula,
        fprime0=f1,
        fsecond0=f2,
        ratio=ratio,
        convex=convex,
        nonconvex_interval=nonconvex,
        tail=tail,
        fprime_zero_at=zero_at,
        smooth_at_zero=0.0 not in kink_points,
        non_smooth_at=kink_points,
        notes=notes,
    )


def taylor_ratio(spec: str | LossFunction) -> float:
    """``f''(0) / |f'(0)|``: GPO with this f at beta ~ IPO at beta * ratio (Appendix B.2)."""
    _, f1, f2 = derivatives_at_zero(resolve_loss(spec).expr)
    return f2 / abs(f1)


def beta_from_ipo_equivalent(beta_ipo: float, spec: str | LossFunction) -> float:
    """The native beta for ``f`` that matches IPO at ``beta_ipo`` near the origin."""
    if not (math.isfinite(beta_ipo) and beta_ipo > 0):
        raise LossSpecError(f"the IPO-equivalent beta must be a finite number > 0, got {beta_ipo!r}")
    f = resolve_loss(spec)
    ratio = taylor_ratio(f)
    if ratio == 0:
        raise LossSpecError(
            f"loss {f.name!r} has f''(0) = 0, so it has no IPO-equivalent beta (the Taylor ratio "
            "f''(0)/|f'(0)| is 0); give beta in the loss's own units instead"
        )
    if ratio < 0:
        raise LossSpecError(
            f"loss {f.name!r} has f''(0)/|f'(0)| = {ratio:g} < 0 (concave at the origin), "
            "so no IPO-equivalent beta exists; give beta in the loss's own units instead"
        )
    return beta_ipo / ratio
