"""The loss registry's names, aliases and descriptions, without torch or sympy: what a spec is
checked against when it is read (a typo'd field must not wait seconds for torch to load), and
what the control service names runs with. The functions themselves are in :mod:`gpo_core.losses`."""

from __future__ import annotations

from gpo_core.errors import InputError


class LossSpecError(InputError):
    """A loss name or formula that cannot be used for GPO; the message says why."""


# name -> (f(x), what else it is called, aliases a spec may use): TRL's and the papers' names.
REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "logistic": ("log(1+e^-x)", "DPO; TRL loss_type='sigmoid'", ("dpo", "sigmoid")),
    "hinge": ("max(0, 1-x)", "SLiC; TRL loss_type='hinge'", ("slic",)),
    "square": ("(x-1)^2", "IPO as in the paper, (beta*rho - 1)^2; not TRL's length-normalised 'ipo'", ("ipo",)),
    "exponential": ("e^-x", "exponential (boosting) loss", ()),
    "truncated_quadratic": ("max(0, 1-x)^2", "truncated quadratic", ()),
    "savage": ("1/(1+e^x)^2", "Savage loss (not convex on R)", ()),
}


def description(name: str) -> str:
    """A registry loss in one line: its f and its other names."""
    formula, also_called, _ = REGISTRY[name]
    return f"{formula}: {also_called}"


ALIASES = {alias: name for name, (_, _, aliases) in REGISTRY.items() for alias in aliases}


def registry_name(text: str) -> str | None:
    """The registry's name for ``text`` (a name or an alias: dpo, slic, ipo, sigmoid), or None for
    anything else. Parses nothing: cheap enough for any request."""
    key = text.strip().lower()
    return key if key in REGISTRY else ALIASES.get(key)


def alias_note(text: str) -> str | None:
    """One line saying what an alias stands for (None for a registry name or a formula): 'ipo' is
    the paper's IPO, not TRL's length-normalised one, and a user must not learn that from results."""
    name = registry_name(text)
    if name is None or name == text.strip().lower():
        return None
    return f"loss '{text}' is the registry's '{name}': {description(name)}"
