"""Before the first training step of a sweep: check, in seconds, that every later stage can run.

A sweep trains for minutes or hours before it samples and judges; a judge model that does not
load, an endpoint that refuses the model name or a dataset the chat template cannot render must
not be found after the first run has trained. Checked here: the policy's tokenizer loads, knows
the data's words (not mostly its unknown token) and renders the first training pair and the first
evaluation prompt (with the chat template, for conversations); the reference is a model folder;
the judge tells apart the chosen and rejected responses of a few training pairs, judged in both
orders (a judge whose verdict follows the position or always ties decides nothing: the whole job
would end "inconclusive" after hours of training). (The generation backend is checked where the
engine starts, also before training: :func:`gpo_core.generate.start_engine`.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gpo_core.conversation import ChatFormat, ConversationError, Prompt, as_text
from gpo_core.data import load_preferences, load_prompts
from gpo_core.errors import InputError
from gpo_core.judging.endpoints import JudgeEndpointRefused
from gpo_core.judging.evaluation import response_text
from gpo_core.stopping import StopCheck
from gpo_core.sweep.spec import JobSpec


class PreflightError(InputError):
    """A stage of the sweep cannot run; the message names the field, file or URL. Retrying
    cannot help."""


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


COVERAGE_SAMPLE = 64  # records whose tokens are counted
MAX_UNKNOWN = 0.5  # a larger share of unknown tokens: the model cannot read the data


def check_coverage(tokenizer, field: str, source: str, texts: list[str], records: int) -> None:
    """The policy's tokenizer knows the data's words: a file whose tokens are mostly the unknown
    token (another language or script than the vocabulary's) trains and judges on nothing, and its
    pairs tokenize alike, so the only sign was "pairs dropped: the same tokens"."""
    unknown = tokenizer.unk_token_id
    if unknown is None or not texts:  # byte-level vocabularies have no unknown token
        return
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    share = sum(i == unknown for i in ids) / len(ids) if ids else 0.0
    if share > MAX_UNKNOWN:
        raise PreflightError(
            f"{field}: {source}: {share:.0%} of the tokens of its first {records} records are the "
            f"policy's unknown token ({tokenizer.unk_token!r}): the model cannot read this data (its vocabulary is "
            "of another language or script, or the data is not text)"
        )


def check_data(
    spec: JobSpec, inputs, progress: Callable[[str], None] = lambda message: None
) -> tuple[list[dict], list[dict]]:
    """The policy's tokenizer renders the first pair and the first prompt; returns (pairs, prompts).
    What is worth a word but not a refusal goes to ``progress``."""
    from transformers import AutoConfig, AutoTokenizer

    for name, folder in (("policy", inputs.policy), ("reference", inputs.reference)):
        try:
            AutoConfig.from_pretrained(folder)
        except (OSError, ValueError) as err:
            raise PreflightError(f"{name}: {folder} is not a usable model folder ({_first_line(err)})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(inputs.policy)
    except (OSError, ValueError) as err:
        raise PreflightError(f"policy: no usable tokenizer in {inputs.policy} ({_first_line(err)})") from None
    pairs = load_preferences(inputs.dataset, columns=spec.dataset_columns, split=spec.dataset_split)
    prompts = load_prompts(inputs.eval_prompts)
    chat = ChatFormat(tokenizer, spec.chat_template)
    try:
        chat.response_ids([pairs[0]["prompt"]], [pairs[0]["chosen"]])
    except ConversationError as err:
        raise PreflightError(f"dataset: {inputs.dataset}: {err}") from None
    try:
        chat.prompt_ids([prompts[0]["prompt"]])
    except ConversationError as err:
        raise PreflightError(f"eval_prompts: {inputs.eval_prompts}: {err}") from None
    texts = [as_text(p[key]) for p in pairs[:COVERAGE_SAMPLE] for key in ("prompt", "chosen", "rejected")]
    check_coverage(tokenizer, "dataset", inputs.dataset, texts, min(len(pairs), COVERAGE_SAMPLE))
    sampled = [as_text(p["prompt"]) for p in prompts[:COVERAGE_SAMPLE]]
    check_coverage(tokenizer, "eval_prompts", inputs.eval_prompts, sampled, len(sampled))
    if note := plain_text_for_a_chat_model(spec, tokenizer, prompts):
        progress(note)
    return pairs, prompts


def plain_text_for_a_chat_model(spec: JobSpec, tokenizer, prompts: list[dict]) -> str | None:
    """A note when the policy has a chat template (an instruct model) and the prompts are plain
    text: as in TRL, plain text is fed as it is, without the template, and an instruct model then
    often answers with nothing at all. Conversational records get the template."""
    if spec.chat_template or not tokenizer.chat_template or not isinstance(prompts[0]["prompt"], str):
        return None
    return (
        "note: the policy has a chat template but the prompts are plain text, which it reads without the "
        "template (as TRL does); an instruct model asked that way often answers with nothing. Give conversational "
        'records ({"prompt": [{"role": "user", "content": ...}], ...}) to have the template applied'
    )


@dataclass
class ProbeResult:
    """What the judge made of the probe pairs, each judged in both orders."""

    pairs: int
    agreed: int  # the data's chosen response won in both orders
    disagreed: int  # the rejected one won in both orders
    by_position: int  # the same position won in both orders
    ties: int
    invalid: int  # no verdict in one of the orders, after the retries

    @property
    def decided(self) -> int:
        return self.agreed + self.disagreed

    def summary(self) -> str:
        invalid = f", {self.invalid} without a verdict" if self.invalid else ""
        return (
            f"decided {self.decided} of {self.pairs} pairs ({self.agreed} as the data's labels, {self.disagreed} "
            f"against them); {self.by_position} by position alone, {self.ties} tied{invalid}"
        )


def check_judge(
    spec: JobSpec,
    inputs,
    probes: list[tuple[Prompt, str, str]],
    should_stop: StopCheck | None = None,
    api_key: str | None = None,
    field: str = "judge",
) -> ProbeResult:
    """The judge at ``field`` (``judge``, or an online job's ``online.annotator``) compares each
    probe (prompt, chosen, rejected) in both orders (a stop request is seen while a call is out);
    with no decided pair it cannot tell responses apart, and the job stops here. An unreachable
    endpoint raises the judge's own :class:`JudgeEndpointError` (it may come back: a service
    retries the task later)."""
    from gpo_core.judging.comparison import side_by_side
    from gpo_core.sweep.stages import make_judge

    settings = spec.judges()[field]
    where = {"endpoint": settings.base_url, "chat": settings.base_url, "local": settings.model_dir}.get(
        settings.kind, "the built-in oracle"
    )
    try:
        judge = make_judge(spec, inputs, api_key, settings)
    except (OSError, ValueError) as err:
        raise PreflightError(f"{field}: {where}: {_first_line(err)}") from None

    items = [
        {"prompt_id": str(i), "prompt": p, "a": chosen, "b": rejected} for i, (p, chosen, rejected) in enumerate(probes)
    ]
    try:
        judged = side_by_side(
            judge, items, retries=settings.retries, should_stop=should_stop, concurrency=settings.concurrency
        )
    except JudgeEndpointRefused as err:
        raise PreflightError(f"{field}: {err}") from None
    outcomes = [record["outcome"] for record in judged.records]
    result = ProbeResult(
        pairs=len(items),
        agreed=outcomes.count("win"),
        disagreed=outcomes.count("loss"),
        by_position=sum(record["flipped"] for record in judged.records),
        ties=sum(r["outcome"] == "tie" and not r["flipped"] for r in judged.records),
        invalid=outcomes.count("invalid"),
    )
    if result.invalid == result.pairs:
        raise PreflightError(
            f"{field}: {where} gave no verdict on the probe ({result.pairs} pair(s), each in both orders, "
            f"{settings.retries + 1} tries each)"
        )
    if result.pairs > 1 and result.decided == 0:
        raise PreflightError(
            f"{field}: {where} cannot tell responses apart: on {result.pairs} pairs of the dataset, each judged "
            f"in both orders, it {result.summary()}. {USELESS[field]} Use a stronger judge (docs/own-data.md, "
            f"'Which judges can decide'), or set {field}.probe: 0 to run anyway"
        )
    return result


USELESS = {  # what a judge that decides nothing would do to the job
    "judge": "No win rate of this job could decide anything.",
    "online.annotator": "Its rounds would have no pair to train on.",
}


def probe_pairs(
    spec: JobSpec, pairs: list[dict], prompts: list[dict], field: str = "judge"
) -> list[tuple[Prompt, str, str]]:
    """The probes of the judge at ``field``: the first ``probe`` training pairs whose responses
    differ (with no probe, one comparison on the first evaluation prompt still shows the judge
    answers)."""
    probe = spec.judges()[field].probe
    if probe == 0:
        return [(prompts[0]["prompt"], "A short answer.", "Another short answer.")]
    usable = [p for p in pairs if response_text(p["chosen"]) != response_text(p["rejected"])]
    return [(p["prompt"], response_text(p["chosen"]), response_text(p["rejected"])) for p in usable[:probe]]


def preflight(
    spec: JobSpec,
    inputs,
    progress: Callable[[str], None] = lambda message: None,
    should_stop: StopCheck | None = None,
    api_keys: Mapping[str, str | None] | None = None,
) -> None:
    """Every check above, the probe for each of the job's judges (an online job's annotator too);
    ``api_keys``: what each endpoint judge sends, by its field. Raises :class:`PreflightError` (or
    a :class:`DatasetError`, which names the record) at the first problem."""
    pairs, prompts = check_data(spec, inputs, progress)
    found = []
    for field in spec.judges():
        key = (api_keys or {}).get(field)
        probed = check_judge(spec, inputs, probe_pairs(spec, pairs, prompts, field), should_stop, key, field)
        if probed.pairs > 1:
            found.append(f"; {'judge' if field == 'judge' else 'annotator'} probe: {probed.summary()}")
    checked = "data, tokenizer, judge and annotator" if len(spec.judges()) > 1 else "data, tokenizer and judge"
    progress(f"preflight: {checked} checked{''.join(found)}")


def start_job(
    spec: JobSpec,
    job_dir: Path,
    say: Callable[[str], None],
    should_stop: StopCheck | None,
    api_keys: Mapping[str, str | None],
) -> None:
    """The job folder's start, in the services' first task of a job (every run, online or not,
    starts at the trainer): before any work, the data, tokenizer and judge do their part (a
    PreflightError fails the job at once; an unreachable judge endpoint is retried later), then the
    folder is tied to the spec."""
    from gpo_core.sweep.stages import resolve_inputs, write_job_file

    if (job_dir / "job.json").exists():
        return
    inputs = resolve_inputs(spec, should_stop=should_stop)
    preflight(spec, inputs, say, should_stop=should_stop, api_keys=api_keys)
    write_job_file(spec, job_dir)
