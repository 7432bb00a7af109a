"""The Taylor view, convexity, tail class and beta calibration, against closed forms."""

import math

import pytest
import torch
from scipy.optimize import brentq

from gpo_core.analysis import analyze, beta_from_ipo_equivalent, taylor_ratio
from gpo_core.losses import BUILTIN_LOSSES, LossSpecError

# name -> f'(0), f''(0) by hand (Savage: f' = -2 s(-x)^2 s(x), f'' = 2 s(-x)^2 s(x) (2 s(x) - s(-x)))
EXPECTED = {
    "logistic": (-0.5, 0.25, True, "I"),
    "hinge": (-1.0, 0.0, True, "II"),
    "square": (-2.0, 2.0, True, "II"),
    "exponential": (-1.0, 1.0, True, "I"),
    "truncated_quadratic": (-2.0, 2.0, True, "II"),
    "savage": (-0.25, 0.125, False, "I"),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builtin_properties(name: str) -> None:
    fprime0, fsecond0, convex, tail = EXPECTED[name]
    p = analyze(name)
    assert p.fprime0 == pytest.approx(fprime0, abs=1e-15)
    assert p.fsecond0 == pytest.approx(fsecond0, abs=1e-15)
    assert p.ratio == pytest.approx(fsecond0 / abs(fprime0), abs=1e-15)
    assert p.convex is convex
    assert p.tail == tail
    assert p.smooth_at_zero


@pytest.mark.parametrize("name", ["hinge", "square", "truncated_quadratic"])
def test_case_two_gradient_reaches_zero_at_one(name: str) -> None:
    assert analyze(name).fprime_zero_at == pytest.approx(1.0, abs=1e-6)


def test_kinks_are_located() -> None:
    assert analyze("hinge").non_smooth_at == [1.0]
    assert analyze("truncated_quadratic").non_smooth_at == [1.0]
    assert analyze("logistic").non_smooth_at == []
    assert any("smooth at 0" in note for note in analyze("hinge").notes)


def test_savage_is_reported_not_convex_where_it_is_concave() -> None:
    """Savage's f'' < 0 exactly for x < -ln 2 (solve 2 s(x) = s(-x))."""
    p = analyze("savage")
    lo, hi = p.nonconvex_interval
    assert hi == pytest.approx(-math.log(2), abs=0.01)
    assert lo < -5
    assert any("not convex" in note for note in p.notes)


def test_user_formula_properties_against_independent_root() -> None:
    p = analyze("exp(-x) + 0.1*x^2")
    assert (p.fprime0, p.fsecond0, p.ratio) == pytest.approx((-1.0, 1.2, 1.2))
    assert p.convex and p.tail == "II"
    root = brentq(lambda x: -math.exp(-x) + 0.2 * x, 0, 5)
    assert p.fprime_zero_at == pytest.approx(root, abs=1e-6)


def test_nonconvex_user_formula_is_reported_not_refused() -> None:
    p = analyze("-atan(x)")  # f' = -1/(1+x^2) < 0, f'' = 2x/(1+x^2)^2 < 0 for x < 0
    assert not p.convex
    assert p.tail == "I"


@pytest.mark.parametrize("name", [n for n in BUILTIN_LOSSES if n != "hinge"])
def test_every_smooth_f_is_ipo_near_the_origin(name: str) -> None:
    """d/drho f(beta rho) / (beta |f'(0)|) = -1 + ratio beta rho + O(rho^2): IPO at beta' = beta ratio."""
    beta, rho = 0.7, 1e-4
    r = torch.tensor(rho, dtype=torch.float64, requires_grad=True)
    f = BUILTIN_LOSSES[name]
    (slope,) = torch.autograd.grad(f(beta * r), r)
    p = analyze(name)
    normalized = slope.item() / (beta * abs(p.fprime0))
    beta_ipo = beta * p.ratio
    r2 = torch.tensor(rho, dtype=torch.float64, requires_grad=True)
    (ipo_slope,) = torch.autograd.grad(BUILTIN_LOSSES["square"](beta_ipo * r2), r2)
    assert normalized == pytest.approx(ipo_slope.item() / (2 * beta_ipo), abs=1e-7)


def test_beta_calibration() -> None:
    assert beta_from_ipo_equivalent(0.1, "logistic") == pytest.approx(0.2)
    assert beta_from_ipo_equivalent(0.1, "square") == pytest.approx(0.1)
    assert beta_from_ipo_equivalent(0.1, "savage") == pytest.approx(0.2)
    assert taylor_ratio("exponential") == pytest.approx(1.0)
    with pytest.raises(LossSpecError, match=r"f''\(0\) = 0.*no IPO-equivalent beta"):
        beta_from_ipo_equivalent(0.1, "hinge")
    with pytest.raises(LossSpecError, match="finite number > 0"):
        beta_from_ipo_equivalent(-1.0, "logistic")
