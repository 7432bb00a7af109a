"""The GPO loss family: ``loss = mean(f(beta * rho))`` for a convex-style function ``f``.

Each built-in ``f`` carries two forms that must agree (a test checks it): a numerically stable
torch form used for training, and a sympy form used for the analysis (derivatives at 0,
Taylor ratio, convexity, tail class), so nothing in the analysis is hard-coded.

Range. For ``|beta * rho| <= 50`` every built-in's value and gradient are finite in float32. Beyond
it: logistic, hinge, truncated quadratic and Savage stay finite for every finite float32 input
(softplus/relu/sigmoid forms; their gradients tend to 0 or a constant); square grows as x^2 and
overflows only past |x| ~ 1.8e19; exponential grows as e^-x and overflows float32 to ``inf`` for
x < -88.7 (``inf`` value and gradient). The training loop refuses a non-finite loss, naming the
step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp
import torch
import torch.nn.functional as F

from gpo_core.formula import FormulaError, X, compile_to_torch, float_value, kink_at_zero, parse_formula
from gpo_core.loss_names import REGISTRY, LossSpecError, description, registry_name

TorchFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LossFunction:
    """One ``f`` of the GPO family: its torch form (training) and sympy form (analysis)."""

    name: str
    torch_fn: TorchFn = field(repr=False, compare=False)
    expr: sp.Expr = field(repr=False)
    description: str = ""
    aliases: tuple[str, ...] = ()
    builtin: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.torch_fn(x)

    @property
    def formula(self) -> str:
        return str(self.expr)


def _builtin(name: str, torch_fn: TorchFn, expr: sp.Expr) -> LossFunction:
    return LossFunction(name, torch_fn, expr, description(name), REGISTRY[name][2], builtin=True)


BUILTIN_LOSSES: dict[str, LossFunction] = {
    f.name: f
    for f in [
        _builtin("logistic", lambda x: F.softplus(-x), sp.log(1 + sp.exp(-X))),
        _builtin("hinge", lambda x: F.relu(1 - x), sp.Max(0, 1 - X)),
        _builtin("square", lambda x: (x - 1) ** 2, (X - 1) ** 2),
        _builtin("exponential", lambda x: torch.exp(-x), sp.exp(-X)),
        _builtin("truncated_quadratic", lambda x: F.relu(1 - x) ** 2, sp.Max(0, 1 - X) ** 2),
        _builtin("savage", lambda x: torch.sigmoid(-x) ** 2, 1 / (1 + sp.exp(X)) ** 2),
    ]
}


def derivatives_at_zero(expr: sp.Expr) -> tuple[float, float, float]:
    """``f(0), f'(0), f''(0)`` from the symbolic derivatives (NaN where one is not defined)."""
    first = sp.diff(expr, X)
    return _value_at_zero(expr), _value_at_zero(first), _value_at_zero(sp.diff(first, X))


def _value_at_zero(e: sp.Expr) -> float:
    """``e(0)`` as a float, NaN where it is not defined or not a float64 number. Evaluated in
    float64 (:func:`gpo_core.formula.float_value`), because sympy's exact evaluation of a huge
    number, such as exp(exp(exp(exp(e)))), never ends."""
    at_zero = e.subs(X, 0)
    try:
        return float_value(at_zero)
    except (OverflowError, ValueError, ZeroDivisionError):
        return math.nan
    except TypeError:
        pass  # a node float_value does not know: sympy evaluates it
    try:
        return float(at_zero.evalf(30))
    except (TypeError, ValueError):  # zoo, nan, complex: not defined at 0
        return math.nan


@functools.lru_cache(maxsize=256)  # a spec names its loss for every run and check: parse it once
def loss_from_formula(text: str) -> LossFunction:
    """A user-defined ``f`` from a formula in ``x``; refused unless it is usable for GPO."""
    try:
        expr = parse_formula(text)
        torch_fn = compile_to_torch(expr)
    except FormulaError as err:
        raise LossSpecError(str(err)) from None
    with torch.no_grad():
        grid = torch.linspace(-50.0, 50.0, 20_001, dtype=torch.float64)
        undefined = torch.isnan(torch_fn(grid)).nonzero()
    if len(undefined):
        at = float(grid[undefined[0, 0]])
        raise LossSpecError(f"formula {text!r} is not real-valued at x = {at:g}; f must be defined on the whole line")
    if kink_at_zero(expr):
        raise LossSpecError(f"formula {text!r} has a kink at x = 0; the GPO analysis needs f twice differentiable at 0")
    f0, f1, f2 = derivatives_at_zero(expr)
    if not all(math.isfinite(v) for v in (f0, f1, f2)):
        raise LossSpecError(
            f"formula {text!r} is not twice differentiable at x = 0 "
            f"(f(0) = {f0}, f'(0) = {f1}, f''(0) = {f2}); the GPO analysis needs f smooth at 0"
        )
    if not f1 < 0:
        raise LossSpecError(
            f"formula {text!r} has f'(0) = {f1:g}; GPO needs f'(0) < 0, so that raising the chosen "
            "response's log-ratio above the rejected one's lowers the loss"
        )
    return LossFunction(text.strip(), torch_fn, expr, "user formula")


def resolve_loss(spec: str | LossFunction) -> LossFunction:
    """A registry name (or alias: dpo, slic, ipo, sigmoid) or a formula in x."""
    if isinstance(spec, LossFunction):
        return spec
    if not isinstance(spec, str):
        raise LossSpecError(f"a loss is a registry name or a formula string, got {type(spec).__name__}")
    if (name := registry_name(spec)) is not None:
        return BUILTIN_LOSSES[name]
    key = spec.strip().lower()
    if key.isidentifier() and key not in ("x", "e", "pi"):
        raise LossSpecError(
            f"unknown loss {spec!r}; choose one of {', '.join(BUILTIN_LOSSES)} "
            "or give a formula in x such as 'exp(-x) + 0.1*x^2'"
        )
    return loss_from_formula(spec)


def gpo_loss(rho: torch.Tensor, beta: float, f: str | LossFunction) -> torch.Tensor:
    """The GPO objective on a batch: ``mean(f(beta * rho))``."""
    if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
        raise LossSpecError(f"beta must be a finite number > 0, got {beta!r}")
    return resolve_loss(f)(beta * rho).mean()
