"""Judges from the command line: ``gpo judge`` (two response sets side by side) and ``gpo
judge-eval`` (a judge's own accuracy on labelled pairs). Both take the same judge options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gpo_client.cli.output import JsonFlag, console, emit_json, fail

TaskOption = Annotated[Path | None, typer.Option(help="Built-in task folder: judge with its gold reward.")]
LocalOption = Annotated[Path | None, typer.Option(help="Local causal LM folder: judge by label log-probs.")]
EndpointOption = Annotated[
    str | None, typer.Option(help="OpenAI-compatible completions base URL, e.g. http://host:8000/v1.")
]
ChatOption = Annotated[
    str | None, typer.Option(help="OpenAI-compatible chat completions base URL (GPT-4-class services).")
]
ModelOption = Annotated[str | None, typer.Option(help="Model name at the endpoint.")]
TemplateOption = Annotated[
    str | None,
    typer.Option(help="summary, dialogue, or a file with {prompt}, {first}, {second} (default: by the prompts)."),
]
LabelsOption = Annotated[tuple[str, str], typer.Option(help="What the judge writes for the first and second response.")]
VerdictOption = Annotated[
    str, typer.Option(help="--endpoint: logprobs or choice; --chat: logprobs, rationale or json.")
]
KeyEnvOption = Annotated[str, typer.Option(help="Environment variable holding the endpoint's key.")]
ConcurrencyOption = Annotated[int, typer.Option(min=1, max=64, help="Comparisons in flight (endpoint judges).")]
CacheOption = Annotated[Path | None, typer.Option(help="Verdict cache file (JSONL).")]


PriceOption = Annotated[
    tuple[float, float] | None,
    typer.Option(help="Price of a million prompt and completion tokens (--chat): the judging's cost is printed."),
]


def check_choice(task, local, endpoint, chat, model) -> None:
    """Exactly one judge, and a model for an endpoint: checked before anything is read."""
    chosen = [option for option in (task, local, endpoint, chat) if option is not None]
    if len(chosen) != 1:
        raise fail("choose exactly one judge: --task, --local, --endpoint or --chat (with --model)")
    if (endpoint or chat) is not None and model is None:
        raise fail("--endpoint and --chat need --model")


def options_judge(task, local, endpoint, chat, model, template, labels, verdict, key_env, price, conversational: bool):
    """The judge the options name (exactly one of task, local, endpoint, chat), made by the same
    factory as a job's judge (:func:`gpo_core.judging.factory.build_judge`) from the same settings."""
    import os

    from pydantic import ValidationError

    from gpo_core.judging.factory import build_judge
    from gpo_core.judging.settings import JudgeSettings
    from gpo_core.judging.templates import TEMPLATES

    check_choice(task, local, endpoint, chat, model)
    if template is not None and template not in TEMPLATES:
        if not Path(template).is_file():
            raise fail(f"--template: {template} is neither summary, dialogue nor a file")
        template = Path(template).read_text(encoding="utf-8")
    kind = "oracle" if task else "local" if local else "chat" if chat else "endpoint"
    options = {"kind": kind, "template": template, "labels": labels, "price_per_million": price}
    if kind in ("endpoint", "chat"):
        options |= {"base_url": endpoint or chat, "model": model, "verdict": verdict}
    if kind == "local":
        options["model_dir"] = str(local)
    try:
        settings = JudgeSettings(**options)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'judge'}: {e['msg']}" for e in err.errors())
        raise fail(problems.replace("Value error, ", "")) from None
    api_key = os.environ.get(key_env) if settings.calls_endpoint else None
    return build_judge(settings, api_key=api_key, task_root=task, conversational=lambda: conversational)


def judge_command(
    responses_a: Annotated[Path, typer.Argument(help="Responses A (JSONL from gpo generate).")],
    responses_b: Annotated[Path, typer.Argument(help="Responses B on the same prompts.")],
    task: TaskOption = None,
    local: LocalOption = None,
    endpoint: EndpointOption = None,
    chat: ChatOption = None,
    model: ModelOption = None,
    template: TemplateOption = None,
    labels: LabelsOption = (" A", " B"),
    verdict: VerdictOption = "logprobs",
    api_key_env: KeyEnvOption = "OPENAI_API_KEY",
    price: PriceOption = None,
    concurrency: ConcurrencyOption = 8,
    cache: CacheOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Judge A against B side by side (both orders): win rate, length-controlled win rate, flips."""
    from gpo_core.conversation import is_conversation
    from gpo_core.generate import load_responses
    from gpo_core.judging.comparison import VerdictCache, pair_responses, side_by_side

    check_choice(task, local, endpoint, chat, model)
    try:
        a, b = load_responses(responses_a), load_responses(responses_b)
    except (OSError, ValueError) as err:
        raise fail(f"cannot read responses: {err}") from None
    items = pair_responses(a, b)
    if not items:
        raise fail(f"{responses_a} and {responses_b} share no (prompt_id, sample)")
    conversational = is_conversation(a[0]["prompt"])
    judge = options_judge(
        task, local, endpoint, chat, model, template, labels, verdict, api_key_env, price, conversational
    )
    with console.status(f"judging {len(items)} pairs in both orders"):
        cached = VerdictCache(cache) if cache else None
        in_flight = concurrency if (endpoint or chat) else 1  # the oracle and local models compute
        result = side_by_side(judge, items, cache=cached, concurrency=in_flight)
    payload = {
        "compared": len(items),
        "unmatched": len(a) - len(items),
        "win_rate": result.win_rate.to_dict() if result.win_rate else None,
        "length_controlled_win_rate": result.length_controlled.to_dict() if result.length_controlled else None,
        "flip_rate": result.flip_rate,
        "invalid": result.invalid,
        "judge_calls": result.judge_calls,
        "mean_length": result.mean_length,
        "usage": result.usage,
    }
    if as_json:
        emit_json(payload)
        return
    if result.win_rate is None:
        raise fail(f"every comparison was invalid ({result.invalid})")
    w, lc = result.win_rate, result.length_controlled
    console.print(f"A over B: win rate {w.rate:.3f} [{w.low:.3f}, {w.high:.3f}] over {w.comparisons} comparisons")
    if lc is not None:
        console.print(f"length-controlled: {lc.rate:.3f} [{lc.low:.3f}, {lc.high:.3f}]")
    console.print(f"flip rate {result.flip_rate:.3f}")
    console.print(f"invalid: {result.invalid}; judge calls: {result.judge_calls}")
    if result.usage:
        cost = f"; cost {result.usage['cost']:.4f}" if result.usage.get("cost") is not None else ""
        console.print(
            f"tokens: {result.usage['prompt_tokens']} prompt, {result.usage['completion_tokens']} completion{cost}"
        )


def judge_eval_command(
    pairs: Annotated[Path, typer.Argument(help="Labelled pairs (common format: chosen is the preferred one).")],
    task: TaskOption = None,
    local: LocalOption = None,
    endpoint: EndpointOption = None,
    chat: ChatOption = None,
    model: ModelOption = None,
    template: TemplateOption = None,
    labels: LabelsOption = (" A", " B"),
    verdict: VerdictOption = "logprobs",
    api_key_env: KeyEnvOption = "OPENAI_API_KEY",
    price: PriceOption = None,
    concurrency: ConcurrencyOption = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="Judge the first N pairs only.")] = None,
    cache: CacheOption = None,
    as_json: JsonFlag = False,
) -> None:
    """A judge's own accuracy: agreement with the labels (and the gold reward when the pairs carry
    one), position bias, tie and invalid rates, each pair judged in both orders."""
    from gpo_core.conversation import is_conversation
    from gpo_core.data import load_preferences
    from gpo_core.judging.comparison import VerdictCache
    from gpo_core.judging.evaluation import evaluate_judge

    check_choice(task, local, endpoint, chat, model)
    records = load_preferences(pairs)[:limit]
    conversational = is_conversation(records[0]["prompt"])
    judge = options_judge(
        task, local, endpoint, chat, model, template, labels, verdict, api_key_env, price, conversational
    )
    with console.status(f"judging {len(records)} labelled pairs in both orders"):
        in_flight = concurrency if (endpoint or chat) else 1  # the oracle and local models compute
        figures = evaluate_judge(judge, records, VerdictCache(cache) if cache else None, concurrency=in_flight)
    if as_json:
        emit_json(figures)
        return
    agreement = figures["agreement"]
    if agreement is None:
        raise fail(f"no valid verdict on {len(records)} pairs (invalid rate {figures['invalid_rate']:.2f})")
    interval = f"[{agreement['low']:.3f}, {agreement['high']:.3f}]"
    console.print(
        f"agreement with the labels: {agreement['rate']:.3f} {interval} over {figures['pairs']} pairs", highlight=False
    )
    if figures.get("gold_agreement") is not None:
        console.print(f"agreement with the gold reward: {figures['gold_agreement']:.3f}", highlight=False)
    console.print(
        f"position bias {figures['position_bias']:.3f}; ties {figures['tie_rate']:.3f}; "
        f"invalid {figures['invalid_rate']:.3f}",
        highlight=False,
    )
    if figures["position_bias_exceeds_signal"]:
        console.print(
            f"warning: the position bias ({figures['position_bias']:.3f}) exceeds the signal "
            f"({figures['signal']:.3f}): its verdicts follow the slot more than the content"
        )
