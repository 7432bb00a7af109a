"""Built-in losses: values, first and second derivatives against closed forms, and stability."""

import math

import pytest
import sympy as sp
import torch

from gpo_core.formula import X, compile_to_torch
from gpo_core.losses import BUILTIN_LOSSES, LossSpecError, gpo_loss, resolve_loss


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


# name -> (f, f', f'') written out by hand (for hinge and truncated quadratic, away from the kink at 1)
CLOSED_FORMS = {
    "logistic": (
        lambda x: math.log1p(math.exp(-x)) if x > -30 else -x + math.log1p(math.exp(x)),
        lambda x: -sigmoid(-x),
        lambda x: sigmoid(x) * sigmoid(-x),
    ),
    "hinge": (lambda x: max(0.0, 1 - x), lambda x: -1.0 if x < 1 else 0.0, lambda x: 0.0),
    "square": (lambda x: (x - 1) ** 2, lambda x: 2 * (x - 1), lambda x: 2.0),
    "exponential": (lambda x: math.exp(-x), lambda x: -math.exp(-x), lambda x: math.exp(-x)),
    "truncated_quadratic": (
        lambda x: max(0.0, 1 - x) ** 2,
        lambda x: -2 * max(0.0, 1 - x),
        lambda x: 2.0 if x < 1 else 0.0,
    ),
    "savage": (
        lambda x: sigmoid(-x) ** 2,
        lambda x: -2 * sigmoid(-x) ** 2 * sigmoid(x),
        lambda x: 2 * sigmoid(-x) ** 2 * sigmoid(x) * (2 * sigmoid(x) - sigmoid(-x)),
    ),
}
POINTS = [-50.0, -7.5, -1.0, -0.3, 0.0, 0.4, 0.99, 1.01, 2.0, 7.5, 50.0]


def derivatives(f, x: float, dtype=torch.float64) -> tuple[float, float, float]:
    t = torch.tensor(x, dtype=dtype, requires_grad=True)
    value = f(t)
    (first,) = torch.autograd.grad(value, t, create_graph=True)
    (second,) = torch.autograd.grad(first, t) if first.requires_grad else (torch.zeros(()),)
    return value.item(), first.item(), second.item()


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
@pytest.mark.parametrize("x", POINTS)
def test_value_and_derivatives_match_closed_form(name: str, x: float) -> None:
    expected = [g(x) for g in CLOSED_FORMS[name]]
    got = derivatives(BUILTIN_LOSSES[name], x)
    for e, g in zip(expected, got, strict=True):
        assert g == pytest.approx(e, rel=1e-9, abs=1e-12), (name, x, expected, got)


@pytest.mark.parametrize("name", list(BUILTIN_LOSSES))
def test_finite_in_float32_up_to_50(name: str) -> None:
    x = torch.linspace(-50, 50, 2001, dtype=torch.float32, requires_grad=True)
    value = BUILTIN_LOSSES[name](x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", [n for n in BUILTIN_LOSSES if n != "exponential"])
def test_beyond_50_stays_finite(name: str) -> None:
    x = torch.tensor([-1e4, -500.0, 500.0, 1e4], dtype=torch.float32, requires_grad=True)
    value = BUILTIN_LOSSES[name](x)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.isfinite(value).all() and torch.isfinite(grad).all()


def test_exponential_overflows_as_documented() -> None:
    f = BUILTIN_LOSSES["exponential"]
    assert torch.isfinite(f(torch.tensor(-88.0))).item()
    assert torch.isinf(f(torch.tensor(-89.0))).item()


@pytest.mark.parametrize("name", list(BUILTIN_LOSSES))
def test_gradcheck_float64(name: str) -> None:
    # Away from the kink at x = 1, where finite differences are not defined.
    x = torch.tensor([-3.0, -0.7, 0.0, 0.5, 1.7, 4.0], dtype=torch.float64, requires_grad=True)
    f = BUILTIN_LOSSES[name]
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("name", list(BUILTIN_LOSSES))
def test_sympy_form_agrees_with_torch_form(name: str) -> None:
    """The analysis reads the sympy form, training runs the torch form: they must be one f."""
    f = BUILTIN_LOSSES[name]
    symbolic = compile_to_torch(f.expr)
    symbolic_slope = compile_to_torch(sp.diff(f.expr, X))
    x = torch.cat([torch.linspace(-20, 0.98, 400), torch.linspace(1.02, 20, 400)]).double()
    x.requires_grad_(True)
    value = f(x)
    (slope,) = torch.autograd.grad(value.sum(), x)
    with torch.no_grad():
        torch.testing.assert_close(value, symbolic(x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(slope, symbolic_slope(x), rtol=1e-10, atol=1e-12)


def test_gpo_loss_is_mean_of_f_of_beta_rho() -> None:
    rho = torch.tensor([-2.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    beta = 0.3
    expected = sum(math.log1p(math.exp(-beta * r)) for r in rho.tolist()) / 4
    assert float(gpo_loss(rho, beta, "logistic")) == pytest.approx(expected, rel=1e-12)
    expected_ipo = sum((beta * r - 1) ** 2 for r in rho.tolist()) / 4
    assert float(gpo_loss(rho, beta, "ipo")) == pytest.approx(expected_ipo, rel=1e-12)


def test_gpo_loss_gradient_in_rho() -> None:
    rho = torch.tensor([-2.0, 0.1, 3.0], dtype=torch.float64, requires_grad=True)
    beta = 0.5
    gpo_loss(rho, beta, "exponential").backward()
    expected = [-beta * math.exp(-beta * r) / 3 for r in rho.tolist()]
    torch.testing.assert_close(rho.grad, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("beta", [0, -1.0, math.inf, math.nan])
def test_bad_beta_is_refused(beta: float) -> None:
    with pytest.raises(LossSpecError, match="beta must be a finite number > 0"):
        gpo_loss(torch.zeros(2), beta, "logistic")


@pytest.mark.parametrize(("alias", "name"), [("dpo", "logistic"), ("SLiC", "hinge"), ("ipo", "square")])
def test_aliases(alias: str, name: str) -> None:
    assert resolve_loss(alias).name == name


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(LossSpecError, match=r"unknown loss 'kto'.*logistic, hinge"):
        resolve_loss("kto")


def test_the_torch_free_registry_names_every_loss_and_nothing_else() -> None:
    """Specs are checked against gpo_core.loss_names (no torch): it must name exactly these."""
    from gpo_core.loss_names import ALIASES, REGISTRY

    assert set(REGISTRY) == set(BUILTIN_LOSSES)
    assert {alias: f.name for f in BUILTIN_LOSSES.values() for alias in f.aliases} == ALIASES
