"""The ``gpo`` command line: the paper's analyses, with ``--json`` for scripts and CI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gpo_core.analysis import analyze
from gpo_core.losses import BUILTIN_LOSSES, LossSpecError

app = typer.Typer(
    help="Generalized Preference Optimization: losses, analyses and the paper's experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)  # tables unwrapped in logs
errors = Console(stderr=True, soft_wrap=True)  # messages carry paths: never wrap them

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
PlotOption = Annotated[Path | None, typer.Option("--plot", help="Also draw the figure to this PNG file.")]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=2)


def _emit_json(payload: object) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


@app.command()
def losses(
    as_json: JsonFlag = False,
    formula: Annotated[
        list[str] | None,
        typer.Option("--formula", help="Analyse this formula in x instead of the built-ins (repeatable)."),
    ] = None,
    plot: PlotOption = None,
) -> None:
    """f'(0), f''(0), the Taylor ratio f''(0)/|f'(0)|, convexity and tail class of each loss."""
    specs = formula or list(BUILTIN_LOSSES)
    try:
        properties = [analyze(spec) for spec in specs]
    except LossSpecError as err:
        raise _fail(str(err)) from None
    if plot is not None:
        from gpo_core.paper.plots import plot_losses

        plot_losses(specs, plot)
    if as_json:
        _emit_json([p.to_dict() for p in properties])
        return
    table = Table(title="GPO losses: GPO(beta) ~ IPO(beta * ratio) near the origin")
    for column in ("name", "f'(0)", "f''(0)", "ratio", "convex", "tail", "notes"):
        table.add_column(column)
    for p in properties:
        table.add_row(
            p.name, f"{p.fprime0:g}", f"{p.fsecond0:g}", f"{p.ratio:g}", str(p.convex), p.tail, "; ".join(p.notes)
        )
    console.print(table)
    if plot is not None:
        console.print(f"plot written to {plot}")


@app.command()
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
    from gpo_core.paper.bandit import run_bandit

    names = loss or list(BUILTIN_LOSSES)
    runs = {}
    try:
        for name in names:
            run = run_bandit(name, beta=beta, steps=steps, lr=lr, seed=seed)
            runs[run.loss] = run
            if not as_json:
                console.print(f"{run.loss:>20}: final pi = {[round(p, 4) for p in run.final_pi]}")
    except (LossSpecError, ValueError) as err:
        raise _fail(str(err)) from None
    if plot is not None:
        from gpo_core.paper.plots import plot_bandit

        plot_bandit(runs, plot)
    if as_json:
        _emit_json({name: run.to_dict() for name, run in runs.items()})
    elif plot is not None:
        console.print(f"plot written to {plot}")


@app.command()
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
    payload = {
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
        _emit_json(payload)
        return
    console.print(f"mu means: {[round(m, 3) for m in curves.mu_means]}")
    minima = payload["local_minima"]
    console.print(f"local minima of KL (integrated): {minima['kl']['integrated']}")
    console.print(f"local minima of the square loss (integrated): {minima['square_loss']['integrated']}")
    verdict = "yes" if curves.is_counterexample else "no"
    console.print(f"square loss has a local minimum away from c = 0 while KL has none: {verdict}")
    if plot is not None:
        console.print(f"plot written to {plot}")


@app.command()
def paper(
    out: Annotated[Path, typer.Option(help="Folder for the JSON results and figures.")] = Path("outputs/paper"),
    steps: Annotated[int, typer.Option(min=1, help="Adam steps of the bandit.")] = 2000,
) -> None:
    """Reproduce the paper's analyses: loss table, bandit (beta = 1), Gaussian counterexample."""
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
            row["name"], f"{row['fprime0']:g}", f"{row['fsecond0']:g}", f"{row['ratio']:g}",
            str(row["convex"]), row["tail"], f"{runs[row['name']].final_pi[0]:.4f}",
        )  # fmt: skip
    console.print(summary)
    console.print(
        f"Gaussian counterexample (seed 0): square-loss local minima {curves.local_minima['square_loss_integrated']}, "
        f"KL local minima {curves.local_minima['kl_integrated']}"
    )
    console.print(f"results and figures in {out}/")


task_app = typer.Typer(help="The built-in summarization task (offline data, gold reward, SFT reference).")
data_app = typer.Typer(help="Preference datasets: conversion and validation.")
app.add_typer(task_app, name="task")
app.add_typer(data_app, name="data")


@task_app.command("build")
def task_build(
    as_json: JsonFlag = False,
    out: Annotated[
        Path | None, typer.Option(help="Cache folder (default: $GPO_CACHE_DIR/tasks or ~/.cache/gpo/tasks).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of everything: vocabulary, documents, model, samples.")] = 0,
    size: Annotated[str, typer.Option(help="small (tests, seconds) or default (the demo, minutes).")] = "default",
    architecture: Annotated[str, typer.Option(help="llama (causal) or t5 (encoder-decoder).")] = "llama",
) -> None:
    """Build the task (or return the cached build) and print its paths and quality figures."""
    from gpo_core.task.build import build_task, task_settings

    try:
        settings = task_settings(size=size, seed=seed, architecture=architecture)
    except ValueError as err:
        raise _fail(str(err)) from None
    if as_json:
        artifacts = build_task(out, settings, progress=lambda message: errors.print(message, highlight=False))
        _emit_json(artifacts.to_dict())
        return
    with console.status("building the task") as status:
        artifacts = build_task(out, settings, progress=status.update)
    summary = Table(title=f"built-in task ({'cached' if artifacts.cached else 'built'}: {artifacts.root})")
    summary.add_column("figure")
    summary.add_column("value")
    for key in (
        "gold_mean_reward", "ref_mean_reward", "ref_greedy_mean_reward", "random_mean_reward",
        "parameters", "build_seconds", "model_dir", "tokenizer_dir", "train_pairs", "eval_pairs", "eval_prompts",
    ):  # fmt: skip
        summary.add_row(key, str(getattr(artifacts, key)))
    console.print(summary)


@data_app.command("convert-tldr")
def data_convert_tldr(
    source: Annotated[Path, typer.Argument(help="OpenAI summarize_from_feedback comparisons (JSONL).")],
    destination: Annotated[Path, typer.Argument(help="Output in the common format (JSONL).")],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip malformed lines and count them instead of stopping.")
    ] = False,
) -> None:
    """Convert TL;DR comparisons to {"prompt", "chosen", "rejected"} with the TL;DR prompt template."""
    from gpo_core.data import DatasetError
    from gpo_core.tldr import convert_tldr

    try:
        report = convert_tldr(source, destination, skip_invalid=skip_invalid)
    except DatasetError as err:
        raise _fail(str(err)) from None
    console.print(f"wrote {report.written} pairs to {destination}", highlight=False)
    if report.skipped:
        errors.print(f"skipped {len(report.skipped)} malformed lines:", highlight=False)
        for reason in report.skipped[:20]:
            errors.print(f"  {reason}", highlight=False)
        if len(report.skipped) > 20:
            errors.print(f"  ... and {len(report.skipped) - 20} more", highlight=False)


@data_app.command("check")
def data_check(path: Annotated[Path, typer.Argument(help="JSONL, Parquet or a saved datasets folder.")]) -> None:
    """Validate a preference dataset; the first bad record is reported with file, line and field."""
    from gpo_core.data import DatasetError, load_preferences

    try:
        records = load_preferences(path)
    except DatasetError as err:
        raise _fail(str(err)) from None
    console.print(f"{path}: {len(records)} valid preference pairs", highlight=False)


@app.command("train")
def train_command(
    spec_file: Annotated[Path, typer.Argument(help="Training spec (YAML or JSON).")],
    workers: Annotated[int | None, typer.Option(help="Override the spec's Ray Train workers (0: in-process).")] = None,
    steps: Annotated[int | None, typer.Option(help="Override the spec's steps.")] = None,
) -> None:
    """Run one GPO training from a spec, with a progress bar; Ctrl-C stops at the next step and
    keeps a checkpoint, and running it again resumes. Metrics go to OUTPUT_DIR/metrics.jsonl."""
    import signal
    import threading

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from gpo_core.data import DatasetError
    from gpo_core.train.loop import RunContext, TrainingError, train
    from gpo_core.train.metrics import FanOut, JsonlSink, follow_jsonl
    from gpo_core.train.ray_runner import STOP_FILE, request_stop, train_on_ray
    from gpo_core.train.spec import SpecError, load_spec

    overrides = {k: v for k, v in {"workers": workers, "steps": steps}.items() if v is not None}
    if "steps" in overrides:
        overrides["epochs"] = None
    try:
        spec = load_spec(spec_file, **overrides)
    except SpecError as err:
        raise _fail(str(err)) from None
    output_dir = Path(spec.output_dir)
    metrics_path = output_dir / "metrics.jsonl"
    stop_file = output_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )

    class ProgressSink:
        def __init__(self, progress, task_id):
            self.progress, self.task_id = progress, task_id

        def emit(self, record: dict) -> None:
            if record["kind"] == "step":
                info = f"loss {record['loss']:.4f} acc {record['accuracy']:.2f} {record['pairs_per_s']:.1f} pairs/s"
                self.progress.update(self.task_id, completed=record["step"], total=record["steps"], info=info)
            elif record["kind"] == "trace":
                parts = [f"{k} {record[k]:.4g}" for k in ("square_loss", "kl") if k in record]
                self.progress.console.print(f"trace at step {record['step']}: " + ", ".join(parts))

        def close(self) -> None:
            pass

    def ask_to_stop(signum, frame):
        request_stop(output_dir)
        errors.print("stopping at the next step (a checkpoint is kept; run again to resume)")

    signal.signal(signal.SIGINT, ask_to_stop)
    try:
        with Progress(*columns, console=console) as progress:
            task_id = progress.add_task(f"{spec.loss} beta={spec.effective_beta:g}", total=spec.steps, info="")
            if spec.workers == 0:
                sink = FanOut(JsonlSink(metrics_path), ProgressSink(progress, task_id))
                result = train(spec, sink, RunContext(should_stop=stop_file.exists))
            else:
                done = threading.Event()
                watcher = threading.Thread(
                    target=follow_jsonl, args=(metrics_path, ProgressSink(progress, task_id), done)
                )
                watcher.start()
                try:
                    result = train_on_ray(spec, metrics_path)
                finally:
                    done.set()
                    watcher.join()
    except (DatasetError, TrainingError) as err:
        raise _fail(str(err)) from None
    state = "stopped" if result.stopped else "finished"
    console.print(f"{state} after {result.steps} steps; final model: {result.final_model_dir}; metrics: {metrics_path}")


@app.command("generate")
def generate_command(
    model_dir: Annotated[Path, typer.Argument(help="Model folder (transformers, with its tokenizer).")],
    prompts: Annotated[Path, typer.Argument(help="Prompts: JSONL records with id and prompt.")],
    out: Annotated[Path, typer.Argument(help="Responses (JSONL) to write.")],
    n: Annotated[int, typer.Option(min=1, help="Responses per prompt.")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy.")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    seed: int = 0,
    backend: Annotated[str, typer.Option(help="transformers, vllm or auto.")] = "auto",
) -> None:
    """Sample responses from a checkpoint for evaluation prompts."""
    from gpo_core.data import DatasetError, load_prompts, write_jsonl
    from gpo_core.generate import SamplingSettings, generate_responses

    try:
        records = load_prompts(prompts)
        missing = next((i for i, r in enumerate(records, start=1) if "id" not in r), None)
        if missing is not None:
            raise DatasetError(f"{prompts}: record {missing}: field 'id' is missing")
        settings = SamplingSettings(temperature, top_p, max_new_tokens, n, seed)
        with console.status(f"generating {n * len(records)} responses"):
            responses = generate_responses(model_dir, records, settings, backend=backend)
    except (DatasetError, ValueError) as err:
        raise _fail(str(err)) from None
    write_jsonl(out, responses)
    console.print(f"wrote {len(responses)} responses ({responses[0]['backend']}) to {out}", highlight=False)


@app.command("judge")
def judge_command(
    responses_a: Annotated[Path, typer.Argument(help="Responses A (JSONL from gpo generate).")],
    responses_b: Annotated[Path, typer.Argument(help="Responses B on the same prompts.")],
    task: Annotated[Path | None, typer.Option(help="Built-in task folder: judge with its gold reward.")] = None,
    local: Annotated[Path | None, typer.Option(help="Local causal LM folder: judge by label log-probs.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://host:8000/v1.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name at the endpoint.")] = None,
    cache: Annotated[Path | None, typer.Option(help="Verdict cache file (JSONL).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Judge A against B side by side (both orders): win rate, length-controlled win rate, flips."""
    from gpo_core.generate import load_responses
    from gpo_core.judge import LogprobJudge, OpenAIJudge, OracleTaskJudge, VerdictCache, side_by_side

    chosen = [option for option in (task, local, endpoint) if option is not None]
    if len(chosen) != 1:
        raise _fail("choose exactly one judge: --task, --local or --endpoint (with --model)")
    if endpoint is not None and model is None:
        raise _fail("--endpoint needs --model")
    try:
        a, b = load_responses(responses_a), load_responses(responses_b)
    except (OSError, ValueError) as err:
        raise _fail(f"cannot read responses: {err}") from None
    by_key = {(r["prompt_id"], r["sample"]): r for r in b}
    items = [
        {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "a": r["response"], "b": by_key[key]["response"]}
        for r in a
        if (key := (r["prompt_id"], r["sample"])) in by_key
    ]
    if not items:
        raise _fail(f"{responses_a} and {responses_b} share no (prompt_id, sample)")
    if task is not None:
        from gpo_core.task.build import BuiltTask

        judge = OracleTaskJudge(BuiltTask(task))
    elif local is not None:
        judge = LogprobJudge(local)
    else:
        judge = OpenAIJudge(endpoint, model)
    with console.status(f"judging {len(items)} pairs in both orders"):
        result = side_by_side(judge, items, cache=VerdictCache(cache) if cache else None)
    payload = {
        "compared": len(items),
        "unmatched": len(a) - len(items),
        "win_rate": result.win_rate.to_dict() if result.win_rate else None,
        "length_controlled_win_rate": result.length_controlled.to_dict() if result.length_controlled else None,
        "flip_rate": result.flip_rate,
        "invalid": result.invalid,
        "judge_calls": result.judge_calls,
        "mean_length": result.mean_length,
    }
    if as_json:
        _emit_json(payload)
        return
    if result.win_rate is None:
        raise _fail(f"every comparison was invalid ({result.invalid})")
    w, lc = result.win_rate, result.length_controlled
    console.print(f"A over B: win rate {w.rate:.3f} [{w.low:.3f}, {w.high:.3f}] over {w.comparisons} comparisons")
    console.print(f"length-controlled: {lc.rate:.3f} [{lc.low:.3f}, {lc.high:.3f}]; flip rate {result.flip_rate:.3f}")
    console.print(f"invalid: {result.invalid}; judge calls: {result.judge_calls}")


def print_winrate_table(report_json: Path) -> None:
    """The report's run table, as a terminal table."""
    rows = json.loads(report_json.read_text(encoding="utf-8"))["table"]
    table = Table(title="Win rate against the reference (95% paired bootstrap over prompts)")
    columns = ("run", "win_rate", "length_controlled", "flip_rate", "gold_reward", "kl", "square_loss")
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in rows:
        table.add_row(*(str(row[column]) for column in columns))
    console.print(table)


class SweepProgress:
    """Live bars for a sweep: one per run, showing its stage and training step."""

    def __init__(self, progress, runs: list[str], steps: int):
        self.progress = progress
        self.bars = {run: progress.add_task(run, total=steps, info="queued") for run in runs}

    def __call__(self, event: dict) -> None:
        run = event.get("run")
        if event["kind"] == "log":
            self.progress.console.print(event["message"])
        elif event["kind"] == "step" and run in self.bars:
            info = f"train: loss {event['loss']:.4f} acc {event['accuracy']:.2f}"
            self.progress.update(self.bars[run], completed=event["step"], info=info)
        elif event["kind"] == "stage" and run in self.bars:
            info = f"{event['stage']}: {event['state']}"
            if event["stage"] == "judge" and event["state"] == "done" and event.get("win_rate"):
                info = f"win rate {event['win_rate']['rate']:.3f}"
            self.progress.update(self.bars[run], info=info)
        elif event["kind"] == "stage":
            self.progress.console.print(f"{run} {event['stage']}: {event['state']}")


@app.command("run")
def run_command(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON): a loss x beta sweep.")],
    out: Annotated[Path | None, typer.Option(help="Job folder (default: outputs/jobs/NAME).")] = None,
) -> None:
    """Run a whole sweep in this process (the embedded default: no Redis, no services): train
    every run, sample it, judge it against the reference, compare runs pairwise, write the report.
    Ctrl-C stops at the next training step; running it again resumes."""
    import signal
    import threading

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gpo_core.data import DatasetError
    from gpo_core.sweep.runner import run_job
    from gpo_core.sweep.spec import JobSpecError, load_job_spec
    from gpo_core.train.loop import TrainingError

    try:
        spec = load_job_spec(spec_file)
    except JobSpecError as err:
        raise _fail(str(err)) from None
    job_dir = out or Path("outputs") / "jobs" / spec.name.replace(" ", "_")
    stop = threading.Event()

    def ask_to_stop(signum, frame):
        stop.set()
        errors.print("stopping at the next step (checkpoints are kept; run again to resume)")

    signal.signal(signal.SIGINT, ask_to_stop)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
    )
    try:
        with Progress(*columns, console=console) as progress:
            watcher = SweepProgress(progress, spec.run_ids(), spec.training.steps)
            report = run_job(spec, job_dir, events=watcher, stop_requested=stop.is_set)
    except (DatasetError, TrainingError, FileNotFoundError) as err:
        raise _fail(str(err)) from None
    if report is None:
        console.print(f"stopped; run again to resume: gpo run {spec_file} --out {job_dir}")
        raise typer.Exit(code=1)
    print_winrate_table(report.with_name("report.json"))
    console.print(f"report: {report}")


def main() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our own progress display is enough
    app()


if __name__ == "__main__":
    main()
