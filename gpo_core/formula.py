"""User-defined loss functions: a formula in ``x``, parsed safely, differentiated by sympy,
compiled to torch.

Why not ``sympy.sympify``: it calls ``eval`` on the text, so ``__import__('os')`` would run.
We parse with Python's ``ast`` (which never executes anything), accept only a small whitelist of
node types, names and functions, and build the sympy expression ourselves.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

import sympy as sp
import torch
import torch.nn.functional as F

from gpo_core.errors import InputError

X = sp.Symbol("x", real=True)

MAX_FORMULA_CHARS = 500
MAX_AST_NODES = 200
MAX_CONSTANT_EXPONENT = 64
# Numbers in a formula (literals and constant parts such as 3^64) are bounded in magnitude too:
# a bound on exponents alone lets (((3^64)^64)^64)^64 build an integer of millions of digits.
MAX_CONSTANT_MAGNITUDE = 1e6


class FormulaError(InputError):
    """A formula that cannot be accepted; the message says what is wrong and where."""


def _sigmoid(u: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-u))


def _softplus(u: sp.Expr) -> sp.Expr:
    return sp.log(1 + sp.exp(u))


def _relu(u: sp.Expr) -> sp.Expr:
    return sp.Max(0, u)


# name -> (number of arguments, or None for "two or more", sympy builder)
FUNCTIONS: dict[str, tuple[int | None, Callable[..., sp.Expr]]] = {
    "exp": (1, sp.exp),
    "log": (1, sp.log),
    "log1p": (1, lambda u: sp.log(1 + u)),
    "sqrt": (1, sp.sqrt),
    "abs": (1, sp.Abs),
    "tanh": (1, sp.tanh),
    "sin": (1, sp.sin),
    "cos": (1, sp.cos),
    "atan": (1, sp.atan),
    "erf": (1, sp.erf),
    "sigmoid": (1, _sigmoid),
    "softplus": (1, _softplus),
    "relu": (1, _relu),
    "max": (None, sp.Max),
    "min": (None, sp.Min),
}
CONSTANTS: dict[str, sp.Expr] = {"x": X, "e": sp.E, "pi": sp.pi}

_BINARY_OPS: dict[type, Callable[[sp.Expr, sp.Expr], sp.Expr]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def parse_formula(text: str) -> sp.Expr:
    """Parse ``text`` (a formula in ``x``) into a sympy expression, executing nothing."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("the formula is empty; write f as an expression in x, e.g. 'log(1+exp(-x))'")
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula has {len(text)} characters; at most {MAX_FORMULA_CHARS} are accepted")
    try:
        # "x^2" means a power, as users write it; textual, so it keeps the precedence of "**"
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError as err:
        column = f" at column {err.offset}" if err.offset else ""
        raise FormulaError(f"cannot parse formula {text!r}{column}: {err.msg}") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_AST_NODES:
        raise FormulaError(f"the formula is too complex ({nodes} syntax nodes, at most {MAX_AST_NODES})")
    expr = _build(tree.body, text)
    if X not in expr.free_symbols:
        raise FormulaError(f"formula {text!r} does not depend on x; f must be a function of x")
    return expr


def _where(node: ast.AST) -> str:
    return f"column {getattr(node, 'col_offset', 0) + 1}"


def _build(node: ast.AST, text: str) -> sp.Expr:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"only numbers are allowed as constants, found {node.value!r} at {_where(node)}")
        if not abs(node.value) <= MAX_CONSTANT_MAGNITUDE:
            raise FormulaError(
                f"the number {node.value:g} at {_where(node)} is too large (at most {MAX_CONSTANT_MAGNITUDE:g} in size)"
            )
        return sp.nsimplify(node.value) if isinstance(node.value, float) else sp.Integer(node.value)
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        if node.id in FUNCTIONS:
            raise FormulaError(f"'{node.id}' is a function: call it, e.g. {node.id}(x), at {_where(node)}")
        raise FormulaError(
            f"unknown name '{node.id}' at {_where(node)}; the variable is x, constants are e and pi, "
            f"functions are {', '.join(sorted(FUNCTIONS))}"
        )
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _build(node.operand, text)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        return _bounded(_BINARY_OPS[type(node.op)](_build(node.left, text), _build(node.right, text)), node)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        base, exponent = _build(node.left, text), _build(node.right, text)
        if exponent.is_number and abs(_real(exponent, node)) > MAX_CONSTANT_EXPONENT:
            raise FormulaError(
                f"exponent {exponent} at {_where(node)} is too large (at most {MAX_CONSTANT_EXPONENT} in size)"
            )
        if base.is_number and exponent.is_number:
            magnitude = abs(_real(exponent, node)) * math.log10(max(abs(_real(base, node)), 1e-300))
            if magnitude > math.log10(MAX_CONSTANT_MAGNITUDE):
                raise FormulaError(
                    f"the constant {ast.unparse(node)} at {_where(node)} is too large "
                    f"(numbers are at most {MAX_CONSTANT_MAGNITUDE:g} in size)"
                )
        return _bounded(base**exponent, node)
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise FormulaError(f"unknown function '{name}' at {_where(node)}; allowed: {', '.join(sorted(FUNCTIONS))}")
        if node.keywords:
            raise FormulaError(f"keyword arguments are not allowed, at {_where(node)}")
        arity, builder = FUNCTIONS[node.func.id]
        args = [_build(arg, text) for arg in node.args]
        if (arity is not None and len(args) != arity) or (arity is None and len(args) < 2):
            wanted = arity if arity is not None else "two or more"
            raise FormulaError(f"{node.func.id}() takes {wanted} argument(s), got {len(args)}, at {_where(node)}")
        return _bounded(builder(*args), node)
    raise FormulaError(f"'{ast.unparse(node)}' at {_where(node)} is not allowed in a loss formula")


def _real(value: sp.Expr, node: ast.AST) -> float:
    """A constant's value as a real number, or a FormulaError if it is not real (log(-1) = i*pi)."""
    try:
        number = complex(value.evalf(20))
    except (TypeError, ValueError):
        raise FormulaError(f"'{ast.unparse(node)}' at {_where(node)} is not a real number") from None
    if number.imag != 0 or math.isnan(number.real):
        raise FormulaError(f"'{ast.unparse(node)}' at {_where(node)} is not a real number ({value})")
    return number.real


def _bounded(value: sp.Expr, node: ast.AST) -> sp.Expr:
    """``value`` unchanged, if it depends on x or is a real constant of bounded magnitude."""
    if value.is_number:
        number = _real(value, node)
        if not abs(number) <= MAX_CONSTANT_MAGNITUDE:
            raise FormulaError(
                f"the constant {ast.unparse(node)} at {_where(node)} is too large "
                f"(numbers are at most {MAX_CONSTANT_MAGNITUDE:g} in size)"
            )
    return value


_FLOAT_FUNCTIONS: dict[type, Callable[[float], float]] = {
    sp.exp: math.exp,
    sp.log: math.log,
    sp.sin: math.sin,
    sp.cos: math.cos,
    sp.tanh: math.tanh,
    sp.atan: math.atan,
    sp.erf: math.erf,
    sp.Abs: abs,
    sp.sign: lambda v: float((v > 0) - (v < 0)),
    sp.Heaviside: lambda v: 1.0 if v > 0 else 0.0 if v < 0 else 0.5,
}


def float_value(e: sp.Expr) -> float:
    """A constant expression in float64, computed node by node with Python's math: OverflowError
    as soon as a part leaves the float range, ValueError where it is undefined (log(0), a complex
    value), TypeError for a node it does not know. Never evaluates a number exactly."""
    if e.is_Number or e in (sp.E, sp.pi):
        value = float(e)  # OverflowError for an integer beyond the float range
    elif isinstance(e, sp.Add):
        value = math.fsum(float_value(a) for a in e.args)
    elif isinstance(e, sp.Mul):
        value = math.prod(float_value(a) for a in e.args)
    elif isinstance(e, sp.Pow):
        value = math.pow(float_value(e.base), float_value(e.exp))
    elif isinstance(e, sp.Max | sp.Min):
        value = (max if isinstance(e, sp.Max) else min)(float_value(a) for a in e.args)
    elif isinstance(e, sp.DiracDelta):
        if float_value(e.args[0]) == 0:
            raise ValueError("DiracDelta(0) is not a number")
        value = 0.0
    elif type(e) in _FLOAT_FUNCTIONS and len(e.args) == 1:
        value = _FLOAT_FUNCTIONS[type(e)](float_value(e.args[0]))
    else:
        raise TypeError(f"cannot evaluate {type(e).__name__} in float64")
    if not math.isfinite(value):
        raise OverflowError("outside the float64 range")
    return value


def kink_at_zero(expr: sp.Expr) -> bool:
    """Whether a piecewise part of ``expr`` (max/min, abs, step) switches exactly at x = 0: read
    from the part's argument at 0, so it holds where solving for all kinks cannot (abs(sin(x))
    has infinitely many)."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Max | sp.Min):
            args = node.args
            arguments = [a - b for i, a in enumerate(args) for b in args[i + 1 :]]
        elif isinstance(node, sp.Abs | sp.Heaviside | sp.sign | sp.DiracDelta):
            arguments = [node.args[0]]
        else:
            continue
        for argument in arguments:
            if X in argument.free_symbols and sp.simplify(argument.subs(X, 0)) == 0:
                return True
    return False


def kinks(expr: sp.Expr) -> list[float]:
    """Real x where a piecewise part of ``expr`` (max/min, abs, step) switches: its kinks."""
    equations: list[sp.Expr] = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Max | sp.Min):
            args = node.args
            equations += [a - b for i, a in enumerate(args) for b in args[i + 1 :]]
        elif isinstance(node, sp.Abs | sp.Heaviside | sp.sign | sp.DiracDelta):
            equations.append(node.args[0])
    points: set[float] = set()
    for eq in equations:
        if X not in eq.free_symbols:
            continue
        solutions = sp.solveset(eq, X, sp.S.Reals)
        if isinstance(solutions, sp.FiniteSet):
            points.update(float(s) for s in solutions if s.is_real)
    return sorted(points)


def _torch_number(value: sp.Expr) -> float:
    return float(value)


def compile_to_torch(expr: sp.Expr) -> Callable[[torch.Tensor], torch.Tensor]:
    """Compile a sympy expression in ``x`` into a torch function (autograd flows through it).

    Two common overflow patterns are computed in stable form: ``log(1 + exp(u))`` becomes
    ``softplus(u)`` and ``(1 + exp(u))**-k`` becomes ``sigmoid(-u)**k``; everything else is
    computed as written.
    """

    def build(e: sp.Expr) -> Callable[[torch.Tensor], torch.Tensor]:
        if e == X:
            return lambda x: x
        if e.is_number:
            c = _torch_number(e)
            return lambda x: torch.full_like(x, c)
        if isinstance(e, sp.Add):
            parts = [build(a) for a in e.args]
            return lambda x: _sum(p(x) for p in parts)
        if isinstance(e, sp.Mul):
            parts = [build(a) for a in e.args]
            return lambda x: _product(p(x) for p in parts)
        if isinstance(e, sp.Pow):
            base, exponent = e.args
            inner = _one_plus_exp_argument(base)
            if inner is not None and exponent.is_number and exponent < 0:
                u, k = build(inner), _torch_number(-exponent)
                return lambda x: torch.sigmoid(-u(x)) ** k
            b = build(base)
            if exponent.is_number:
                k = _torch_number(exponent)
                if k == 0.5:
                    return lambda x: torch.sqrt(b(x))
                return lambda x: torch.pow(b(x), k)
            p = build(exponent)
            return lambda x: torch.pow(b(x), p(x))
        if isinstance(e, sp.log):
            inner = _one_plus_exp_argument(e.args[0])
            if inner is not None:
                u = build(inner)
                return lambda x: F.softplus(u(x))
            a = build(e.args[0])
            return lambda x: torch.log(a(x))
        if isinstance(e, sp.Max | sp.Min):
            parts = [build(a) for a in e.args]
            combine = torch.maximum if isinstance(e, sp.Max) else torch.minimum
            return lambda x: _reduce(combine, [p(x) for p in parts])
        if isinstance(e, sp.Heaviside):
            a = build(e.args[0])
            return lambda x: torch.heaviside(a(x), torch.full_like(x, 0.5))
        unary = _UNARY.get(type(e))
        if unary is not None:
            a = build(e.args[0])
            return lambda x: unary(a(x))
        raise FormulaError(f"cannot compile '{e}' to torch")

    return build(expr)


def _one_plus_exp_argument(e: sp.Expr) -> sp.Expr | None:
    """Return u if ``e`` is ``1 + exp(u)``, else None."""
    if isinstance(e, sp.Add) and len(e.args) == 2:
        one = [a for a in e.args if a == 1]
        exps = [a for a in e.args if isinstance(a, sp.exp)]
        if one and exps:
            return exps[0].args[0]
    return None


_UNARY: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    sp.exp: torch.exp,
    sp.Abs: torch.abs,
    sp.tanh: torch.tanh,
    sp.sin: torch.sin,
    sp.cos: torch.cos,
    sp.atan: torch.atan,
    sp.erf: torch.erf,
    sp.sign: torch.sign,
}


def _sum(terms) -> torch.Tensor:
    first, *rest = terms  # sympy's Add has two or more terms
    for t in rest:
        first = first + t
    return first


def _product(factors) -> torch.Tensor:
    first, *rest = factors  # sympy's Mul has two or more factors
    for f in rest:
        first = first * f
    return first


def _reduce(combine, values: list[torch.Tensor]) -> torch.Tensor:
    out = values[0]
    for v in values[1:]:
        out = combine(out, v)
    return out
