"""The paper's analyses, computed here: ``gpo losses``, ``bandit``, ``gaussians``, ``paper``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gpo_client.cli.output import JsonFlag, PlotOption, console, emit_json, fail


def losses(
    as_json: JsonFlag = False,
    formula: Annotated[
        list[str] | None,
        typer.Option("--formula", help="Analyse this formula in x instead of the built-ins (repeatable)."),
    ] = None,
    plot: PlotOption = None,
) -> None:
    """f'(0), f''(0), the Taylor ratio f''(0)/|f'(0)|, convexity and tail class of each loss."""
    from gpo_core.analysis import analyze
    from gpo_core.losses import BUILTIN_LOSSES

    specs = formula or list(BUILTIN_LOSSES)
    properties = [analyze(spec) for spec in specs]
    if plot is not None:
        from gpo_core.paper.plots import plot_losses

        plot_losses(specs, plot)
    from gpo_core.loss_names import REGISTRY

    names = {p.name: REGISTRY.get(p.name, (p.name, "-", ()))[:2] for p in properties}  # a formula is its own f(x)
    if as_json:
        emit_json([{**p.to_dict(), "f": names[p.name][0], "also_called": names[p.name][1]} for p in properties])
        return
    table = Table(title="GPO losses: GPO(beta) ~ IPO(beta * ratio) near the origin")
    for column in ("name", "f(x)", "also called", "f'(0)", "f''(0)", "ratio", "convex", "tail", "notes"):
        table.add_column(column)
    for p in properties:
        f_of_x, also_called = names[p.name]
        table.add_row(
            p.name, f_of_x, also_called, f"{p.fprime0:g}", f"{p.fsecond0:g}", f"{p.ratio:g}", str(p.convex), p.tail,
            "; ".join(p.notes),
        )  # fmt: skip
    console.print(table)
    if plot is not None:
        console.print(f"plot written to {plot}")


def bandit(
    as_json: JsonFlag = False,
    loss: Annotated[
        list[str] | None, typer.Option("--loss", help="Loss name or formula (repeatable; default: all built-ins).")
    ] = None,
    beta: Annotated[float, typer.Option(help="beta of the GPO loss.")] = 1.0,
    steps: Annotated[int, typer.Option(min=1, help="Adam steps.")] = 2000,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the minibatch draws.")] = 0,
    plot: PlotOption = None,
) -> None:
    """The 3-action bandit of section 4.1 (Fig. 3): trajectories of pi(y) per loss."""
    from gpo_core.losses import BUILTIN_LOSSES
    from gpo_core.paper.bandit import run_bandit

    names = loss or list(BUILTIN_LOSSES)
    runs = {}
    try:
        for name in names:
            run = run_bandit(name, beta=beta, steps=steps, lr=lr, seed=seed)
            runs[run.loss] = run
            if not as_json:
                console.print(f"{run.loss:>20}: final pi = {[round(p, 4) for p in run.final_pi]}")
    except ValueError as err:
        raise fail(str(err)) from None
    if plot is not None:
        from gpo_core.paper.plots import plot_bandit

        plot_bandit(runs, plot)
    if as_json:
        emit_json({name: run.to_dict() for name, run in runs.items()})
    elif plot is not None:
        console.print(f"plot written to {plot}")


def gaussians(
    as_json: JsonFlag = False,
    seed: Annotated[int, typer.Option(help="Seed of mu's component means and of the samples.")] = 0,
    samples: Annotated[int, typer.Option(min=2, help="Samples for the Monte Carlo curves.")] = 2000,
    plot: PlotOption = None,
) -> None:
    """The mixture-of-Gaussians counterexample of section 4.2 (Fig. 4): KL vs square loss over c."""
    from gpo_core.paper.gaussians import gaussian_curves

    curves = gaussian_curves(seed=seed, samples=samples)
    if plot is not None:
        from gpo_core.paper.plots import plot_gaussians

        plot_gaussians(curves, plot)
    payload: dict[str, Any] = {
        "seed": curves.seed,
        "mu_means": curves.mu_means,
        "c": curves.c,
        "kl": {"sampled": curves.kl_sampled, "integrated": curves.kl_integrated},
        "square_loss": {"sampled": curves.square_loss_sampled, "integrated": curves.square_loss_integrated},
        "local_minima": {
            "kl": {"sampled": curves.local_minima["kl_sampled"], "integrated": curves.local_minima["kl_integrated"]},
            "square_loss": {
                "sampled": curves.local_minima["square_loss_sampled"],
                "integrated": curves.local_minima["square_loss_integrated"],
            },
        },
        "counterexample": curves.is_counterexample,
    }
    if as_json:
        emit_json(payload)
        return
    console.print(f"mu means: {[round(m, 3) for m in curves.mu_means]}")
    minima = payload["local_minima"]
    console.print(f"local minima of KL (integrated): {minima['kl']['integrated']}")
    console.print(f"local minima of the square loss (integrated): {minima['square_loss']['integrated']}")
    verdict = "yes" if curves.is_counterexample else "no"
    console.print(f"square loss has a local minimum away from c = 0 while KL has none: {verdict}")
    if plot is not None:
        console.print(f"plot written to {plot}")


def paper(
    out: Annotated[Path, typer.Option(help="Folder for the JSON results and figures.")] = Path("outputs/paper"),
    steps: Annotated[int, typer.Option(min=1, help="Adam steps of the bandit.")] = 2000,
) -> None:
    """Reproduce the paper's analyses: loss table, bandit (beta = 1), Gaussian counterexample."""
    from gpo_core.analysis import analyze
    from gpo_core.losses import BUILTIN_LOSSES
    from gpo_core.paper.bandit import run_bandit
    from gpo_core.paper.gaussians import gaussian_curves
    from gpo_core.paper.plots import plot_bandit, plot_gaussians, plot_losses

    out.mkdir(parents=True, exist_ok=True)
    with console.status("analysing the losses"):
        table = [analyze(name).to_dict() for name in BUILTIN_LOSSES]
        plot_losses(list(BUILTIN_LOSSES), out / "losses.png")
    (out / "losses.json").write_text(json.dumps(table, indent=2))
    runs = {}
    for name in BUILTIN_LOSSES:
        with console.status(f"bandit: {name}"):
            runs[name] = run_bandit(name, beta=1.0, steps=steps)
    plot_bandit(runs, out / "bandit.png")
    (out / "bandit.json").write_text(json.dumps({n: r.to_dict() for n, r in runs.items()}, indent=2))
    with console.status("mixture of Gaussians"):
        curves = gaussian_curves(seed=0)
        plot_gaussians(curves, out / "gaussians.png")
    (out / "gaussians.json").write_text(json.dumps(curves.to_dict(), indent=2))

    summary = Table(title="GPO losses and the 3-action bandit at beta = 1")
    for column in ("loss", "f'(0)", "f''(0)", "ratio", "convex", "tail", "final pi(y1)"):
        summary.add_column(column)
    for row in table:
        summary.add_row(
            row["name"],
            f"{row['fprime0']:g}",
            f"{row['fsecond0']:g}",
            f"{row['ratio']:g}",
            str(row["convex"]),
            row["tail"],
            f"{runs[row['name']].final_pi[0]:.4f}",
        )
    console.print(summary)
    console.print(
        f"Gaussian counterexample (seed 0): square-loss local minima {curves.local_minima['square_loss_integrated']}, "
        f"KL local minima {curves.local_minima['kl_integrated']}"
    )
    console.print(f"results and figures in {out}/")
