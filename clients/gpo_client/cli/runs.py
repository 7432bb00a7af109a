"""Work in this process, no services: ``gpo train``, ``generate``, ``judge``, ``run`` (a whole
sweep, the embedded default), ``reproduce`` and ``claims`` (a grid's claims over several jobs)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpo_client.cli.output import JsonFlag, console, emit_json, errors, fail, print_winrate_table


def train_command(
    spec_file: Annotated[Path, typer.Argument(help="Training spec (YAML or JSON).")],
    workers: Annotated[int | None, typer.Option(help="Override the spec's Ray Train workers (0: in-process).")] = None,
    steps: Annotated[int | None, typer.Option(help="Override the spec's steps.")] = None,
) -> None:
    """Run one GPO training from a spec, with a progress bar; Ctrl-C stops at the next step and
    keeps a checkpoint, and running it again resumes. Metrics go to OUTPUT_DIR/metrics.jsonl."""
    from gpo_core.train.spec import load_spec

    overrides: dict[str, int | None] = {k: v for k, v in {"workers": workers, "steps": steps}.items() if v is not None}
    if "steps" in overrides:
        overrides["epochs"] = None
    spec = load_spec(spec_file, **overrides)  # before torch loads: a spec's errors come at once
    from gpo_client.progress import RunProgress
    from gpo_core.notes import spec_notes
    from gpo_core.train.launch import metrics_path, run_training

    for note in spec_notes(spec):
        errors.print(f"note: {note}", highlight=False)
    label = f"{spec.loss} beta={spec.effective_beta:g}"
    stop = _stop_on_ctrl_c("stopping at the next step (a checkpoint is kept; run again to resume)")

    class ToDisplay:
        def emit(self, record: dict) -> None:
            display.training(label, record)

        def close(self) -> None:
            pass

    with RunProgress(console) as display:
        display.add(label, spec.steps, info="")
        result = run_training(spec, ToDisplay(), stop.is_set)
    if result.diverged:
        raise fail(
            f"training diverged: {result.diverged}; metrics: {metrics_path(spec)} (a smaller beta or lr "
            "may train; give another output_dir, this one holds the diverged run)"
        )
    state = "stopped" if result.stopped else "finished"
    console.print(
        f"{state} after {result.steps} steps; final model: {result.final_model_dir}; metrics: {metrics_path(spec)}"
    )


def plan_command(
    spec_file: Annotated[Path, typer.Argument(help="Training spec (YAML or JSON).")],
    memory: Annotated[
        str | None, typer.Option(help="Memory of one worker, e.g. 80GiB (default: this machine's GPU, or its RAM).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Before launch: memory per worker by kind (weights, gradients, optimizer state, activations,
    logits), FLOPs per step, and whether it fits; at the spec's length limits. Exits 1 when it
    does not fit."""
    from gpo_core.train.spec import load_spec

    try:
        spec = load_spec(spec_file)  # before torch loads: a spec's errors come at once
        from gpo_core.train.plan import parse_size, plan, worker_memory

        available, source = (parse_size(memory), "--memory") if memory else worker_memory(spec)
        result = plan(spec)
    except (ValueError, OSError) as err:
        raise fail(str(err)) from None
    fits = result.fits(available)
    if as_json:
        emit_json({**result.as_dict(), "available_bytes": available, "fits": fits})
    else:
        gib = 2**30
        table = Table(title=f"{spec_file}: memory per worker ({result.shape.parameters / 1e6:,.1f}M parameters)")
        table.add_column("what")
        table.add_column("GiB", justify="right")
        for kind, size in result.memory.items():
            table.add_row(kind, f"{size / gib:.2f}")
        table.add_row("[bold]total[/bold]", f"[bold]{result.total / gib:.2f}[/bold]")
        console.print(table)
        console.print(
            f"largest micro-batch: {result.tokens_per_micro_batch:,} tokens "
            f"({result.scored_tokens_per_micro_batch:,} scored); {result.flops_per_step:.3g} FLOPs per step"
        )
        for note in result.notes:
            console.print(f"note: {note}")
        verdict = "fits" if fits else "[red]does not fit[/red]"
        console.print(f"{verdict}: {result.total / available:.0%} of {available / gib:.1f} GiB ({source})")
    if not fits:
        raise typer.Exit(code=1)


def _stop_on_ctrl_c(message: str) -> threading.Event:
    """Ctrl-C sets the returned event (the run stops at its next step) instead of killing it."""
    stop = threading.Event()

    def ask_to_stop(signum, frame) -> None:
        stop.set()
        errors.print(message)

    signal.signal(signal.SIGINT, ask_to_stop)
    return stop


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
    from gpo_core.generate import SamplingSettings, generate_responses, start_engine

    if not (model_dir / "config.json").is_file():
        raise fail(f"{model_dir}: not a transformers model folder (no config.json)")
    try:
        records = load_prompts(prompts)
        missing = next((i for i, r in enumerate(records, start=1) if "id" not in r), None)
        if missing is not None:
            raise DatasetError(f"{prompts}: record {missing}: field 'id' is missing")
        settings = SamplingSettings(temperature, top_p, max_new_tokens, n, seed)
        engine, note = start_engine(model_dir, backend)
        if note:
            errors.print(f"note: {note}", highlight=False)
        try:
            with console.status(f"generating {n * len(records)} responses"):
                used = "vllm" if engine is not None else "transformers"
                responses = generate_responses(model_dir, records, settings, backend=used, engine=engine)
        finally:
            if engine is not None:
                engine.close()
    except ValueError as err:  # the sampling settings' own checks
        raise fail(str(err)) from None
    write_jsonl(out, responses)
    console.print(f"wrote {len(responses)} responses ({responses[0]['backend']}) to {out}", highlight=False)


ParallelOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Runs trained, sampled and judged at a time, each in a process of its own with the cores "
        "shared out (on a CPU, small models: as many as cores; on one GPU keep 1, as each worker's vLLM "
        "engine would claim most of its memory). Figures can depend on the thread count: "
        "give the same value to get a sweep's figures again.",
    ),
]


def run_command(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML or JSON): a loss x beta sweep.")],
    out: Annotated[Path | None, typer.Option(help="Job folder (default: outputs/jobs/NAME).")] = None,
    parallel: ParallelOption = 1,
) -> None:
    """Run a whole sweep in this process (the embedded default: no Redis, no services): train
    every run, sample it, judge it against the reference, compare runs pairwise, write the report.
    Ctrl-C stops at the next training step; running it again resumes."""
    from gpo_core.sweep.spec import load_job_spec, missing_inputs

    spec = load_job_spec(spec_file)
    problems = missing_inputs(spec)
    if problems:
        raise fail(f"{spec_file}: " + "; ".join(problems) + " (relative paths are taken from the spec file's folder)")
    run_sweep(spec, out, f"gpo run {spec_file}", parallel)


def reproduce_command(
    gpu: Annotated[bool, typer.Option("--gpu", help="The grid sized for one GPU (longer training, vLLM).")] = False,
    architecture: Annotated[
        str | None, typer.Option(help="The built-in task's policy: llama (default) or t5 (the paper's).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Job folder (default: outputs/jobs/reproduce[-gpu]).")] = None,
    print_spec: Annotated[bool, typer.Option("--print-spec", help="Print the job spec and stop.")] = False,
    parallel: ParallelOption = 1,
) -> None:
    """The paper's sweep on the built-in task (Fig. 8, 9 and 5): six losses x seven betas, two
    seeds each, the pairwise matrix at beta 0.1 and the KL / square-loss traces, ending with the
    claims table (C1-C4). Runs in this process like gpo run; Ctrl-C stops, running it again
    resumes."""
    from importlib.resources import files

    import yaml

    from gpo_core.sweep.spec import parse_job_spec

    name = "reproduce-gpu.yaml" if gpu else "reproduce.yaml"
    data = yaml.safe_load(files("gpo_core.sweep").joinpath("specs", name).read_text(encoding="utf-8"))
    if architecture is not None:
        data["task"] = {**data["task"], "architecture": architecture}
        data["name"] = f"{data['name']}-{architecture}"
    spec = parse_job_spec(data, name)
    if print_spec:
        console.print(yaml.safe_dump(data, sort_keys=False).rstrip(), highlight=False, markup=False)
        return
    flags = " --gpu" * gpu + (f" --architecture {architecture}" if architecture else "")
    run_sweep(spec, out, f"gpo reproduce{flags}", parallel)


def run_sweep(spec, out: Path | None, command: str, parallel: int = 1) -> None:
    """Run ``spec`` in this process with progress bars, then print the run table and the claims."""
    from gpo_client.progress import RunProgress
    from gpo_core.notes import spec_notes
    from gpo_core.sweep.runner import run_job

    for note in spec_notes(spec):
        errors.print(f"note: {note}", highlight=False)
    job_dir = out or Path("outputs") / "jobs" / spec.name.replace(" ", "_")
    stop = _stop_on_ctrl_c("stopping at the next step (checkpoints are kept; run again to resume)")
    try:
        with RunProgress(console) as display:
            for run in spec.run_ids():
                display.add(run, spec.training.steps)
            report = run_job(spec, job_dir, events=display.sweep_event, stop_requested=stop.is_set, parallel=parallel)
    except FileNotFoundError as err:  # an input deleted since the spec was checked
        raise fail(str(err)) from None
    if report is None:
        again = f" --parallel {parallel}" if parallel > 1 else ""
        console.print(f"stopped; run again to resume: {command} --out {job_dir}{again}")
        raise typer.Exit(code=1)
    print_winrate_table(report.with_name("report.json"))
    console.print(f"report: {report}")
    if json.loads(report.with_name("report.json").read_text(encoding="utf-8")).get("inconclusive"):
        raise typer.Exit(code=1)  # the report is there, but it decides nothing: not a success


def claims_command(
    jobs: Annotated[list[Path], typer.Argument(help="Job folders of one grid, each trained with other seeds.")],
    as_json: JsonFlag = False,
) -> None:
    """The paper's claims (C1-C4) decided again by the current rules: on each job's own seeds, then
    on all their seeds pooled. Give the same sweep run with other training.seed values to see
    whether a verdict changes with the seeds, and what all of them decide together."""
    from gpo_core.sweep.pooled import pooled_claims
    from gpo_core.sweep.report import claims_rows

    pooled = pooled_claims(jobs)
    if as_json:
        emit_json(pooled)
        return
    for job in pooled["jobs"]:
        if job["inconclusive"]:
            errors.print(f"inconclusive: {job['job']}: {job['inconclusive']}", highlight=False)
    table = Table(title="Verdicts by job (its own seeds) and pooled")
    table.add_column("claim")
    for job in pooled["jobs"]:
        table.add_column(f"{job['job']} (seeds {', '.join(map(str, job['seeds']))})")
    if len(pooled["jobs"]) > 1:
        table.add_column(f"pooled (seeds {', '.join(map(str, pooled['seeds']))})")
    for k, claim in enumerate(pooled["claims"]):
        verdicts = [job["claims"][k]["verdict"] for job in pooled["jobs"]]
        table.add_row(claim["claim"], *verdicts, *([claim["verdict"]] if len(pooled["jobs"]) > 1 else []))
    console.print(table)
    detail = Table(title="What decides each pooled verdict" if len(pooled["jobs"]) > 1 else "What decides each verdict")
    for column in ("claim", "numbers", "verdict"):
        detail.add_column(column)
    for row in claims_rows(pooled):
        detail.add_row(row["claim"], row["numbers"], row["verdict"])
    console.print(detail)
    if len(pooled["jobs"]) > 1:
        differ = pooled["verdicts_differ"]
        same = "every job gives the same verdicts"
        console.print(f"verdicts that change with the seeds: {', '.join(differ)}" if differ else same, highlight=False)
