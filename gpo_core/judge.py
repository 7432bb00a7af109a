"""The judging stage: side-by-side comparisons of two response sets on the same prompts.

Every pair is judged in both orders. A verdict that flips with the order (A first -> A, B first
-> B) is a position effect, not a preference: it counts as a tie, and the flip rate is reported.
Unusable judge output is retried, then recorded as invalid and counted, never dropped silently.
Verdicts are cached by (judge settings, prompt, first response, second response).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from gpo_core.conversation import Prompt, as_text
from gpo_core.stats import WinRate, length_controlled_win_rate, win_rate
from gpo_core.stopping import StopCheck, check

OrderVerdict = Literal["first", "second", "tie"]

DEFAULT_TEMPLATE = (
    "Which of the following summaries does a better job of summarizing the most important points in the "
    "given forum post, without including unimportant or irrelevant details?\n\nPost:\n{prompt}\n\n"
    "Summary A:\n{first}\n\nSummary B:\n{second}\n\nThe better summary is"
)
DIALOGUE_TEMPLATE = (
    "For the following conversation, which response is more helpful, honest and harmless as the "
    "assistant's next reply?\n\nConversation:\n{prompt}\n\nResponse A:\n{first}\n\n"
    "Response B:\n{second}\n\nThe better response is"
)
# Built-in templates by name: the paper's summarization prompt and one for dialogue.
TEMPLATES = {"summary": DEFAULT_TEMPLATE, "dialogue": DIALOGUE_TEMPLATE}


def template_text(template: str | None, conversational: bool = False) -> str:
    """A template given by name (summary, dialogue) or as text; by default the dialogue template
    for conversational prompts and the paper's summary template otherwise."""
    if template is None:
        return DIALOGUE_TEMPLATE if conversational else DEFAULT_TEMPLATE
    return TEMPLATES.get(template, template)


SLOTS = ("prompt", "first", "second")
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class JudgeOutputError(ValueError):
    """The judge produced something that is not a verdict."""


class JudgeEndpointError(RuntimeError):
    """The judge endpoint could not give an answer (unreachable, timed out, a server error):
    another attempt later may succeed. The message names the endpoint and the HTTP status only,
    never what the server sent back."""


class JudgeEndpointRefused(ValueError):
    """The judge endpoint refused the request (HTTP 4xx other than 408 and 429: a wrong model name,
    URL or key); retrying cannot help."""


def check_template(template: str) -> None:
    """A judge template is text with the slots ``{prompt}``, ``{first}`` and ``{second}``, each
    exactly once, and ``{{``/``}}`` for literal braces; nothing else. (Not ``str.format``: a
    tenant's template must not reach attributes or ask for a 40 GB padded field.)"""
    seen = dict.fromkeys(SLOTS, 0)
    for match in _TEMPLATE_TOKEN.finditer(template):
        token, name = match.group(0), match.group(1)
        if token in ("{{", "}}"):
            continue
        if name not in SLOTS:
            shown = token if len(token) <= 40 else token[:37] + "..."
            raise ValueError(
                f"template: {shown!r} at character {match.start()} is not a slot; the slots are "
                "{prompt}, {first} and {second} (write {{ and }} for literal braces)"
            )
        seen[name] += 1
    for name, count in seen.items():
        if count != 1:
            raise ValueError(f"template must contain {{{name}}} exactly once (found {count})")


def endpoint_url(url: str) -> str:
    """``url`` normalized (no trailing slash) if it is a plain http(s) URL with a host: no
    credentials, query or fragment (a key belongs in the server's configuration, not a URL)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as err:
        raise ValueError(f"not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("must not carry credentials, a query or a fragment")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def render_template(template: str, prompt: Prompt, first: str, second: str) -> str:
    """``template`` (checked by :func:`check_template`) with its slots filled; a conversational
    prompt as ``Role: content`` paragraphs (judges that read text read it so)."""
    values = {"prompt": as_text(prompt), "first": first, "second": second}

    def fill(match: re.Match) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        if match.group(1) not in values:
            raise ValueError(f"template: {token[:40]!r} is not a slot")
        return values[match.group(1)]

    return _TEMPLATE_TOKEN.sub(fill, template)


class Judge(Protocol):
    key: str  # identifies the judge and its settings (part of the verdict cache key)

    def compare(self, prompt: Prompt, first: str, second: str) -> OrderVerdict: ...


@runtime_checkable
class AsyncJudge(Judge, Protocol):
    """A judge whose requests go out on an event loop (a chat API): many in flight, no thread each."""

    def async_client(self) -> Any: ...

    async def acompare(self, client: Any, prompt: Prompt, first: str, second: str) -> OrderVerdict: ...


ORDER_OF: dict[str, OrderVerdict] = {"a": "first", "b": "second", "tie": "tie"}


class OracleTaskJudge:
    """The built-in task's oracle judge (``gpo_core.task.reward.OracleJudge``) as a judging-stage
    backend: deterministic (higher gold reward wins, equal ties) or sampled (Bradley-Terry)."""

    def __init__(
        self, task, mode: Literal["deterministic", "sampled"] = "deterministic", temperature: float = 0.5, seed: int = 0
    ):
        from gpo_core.task.reward import OracleJudge

        self.task = task
        self.oracle = OracleJudge(mode, temperature, seed)
        # Sampled verdicts are draws, not facts about the pair: never served from the cache.
        self.key = f"oracle:{task.root.name}" if mode == "deterministic" else f"oracle-sampled:{id(self)}"

    def compare(self, prompt: Prompt, first: str, second: str) -> OrderVerdict:
        verdict = self.oracle.judge(self.task.document_for(as_text(prompt)), first, second)
        return ORDER_OF[verdict]


class LogprobJudge:
    """A local transformers causal LM that reads the template and scores the two labels by their
    log-probabilities as continuations of it: the verdict is always one of the labels (or a tie
    when they score the same). A label may be several tokens for this tokenizer (" A" often is,
    for a byte-level BPE): its score is the sum of its tokens' log-probabilities."""

    def __init__(self, model_dir: str | Path, template: str = DEFAULT_TEMPLATE, labels: tuple[str, str] = (" A", " B")):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        check_template(template)
        self.template, self.labels = template, labels
        self.label_ids = [self.tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
        if any(not ids for ids in self.label_ids) or self.label_ids[0] == self.label_ids[1]:
            raise ValueError(f"the labels {labels} must be two different, non-empty texts for this tokenizer")
        unknown = self.tokenizer.unk_token_id
        if unknown is not None and any(unknown in ids for ids in self.label_ids):
            raise ValueError(f"the labels {labels} are unknown to this tokenizer")
        digest = hashlib.sha256((str(model_dir) + template + "|".join(labels)).encode()).hexdigest()[:16]
        self.key = f"logprob:{digest}"

    @torch.no_grad()
    def label_logprobs(self, text: str) -> list[float]:
        """log p(label | text) of each label, its tokens' log-probabilities summed."""
        ids = self.tokenizer(text)["input_ids"]
        scores = []
        for label in self.label_ids:
            logits = self.model(input_ids=torch.tensor([ids + label])).logits[0, len(ids) - 1 : -1]
            scores.append(float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(label)[:, None]).sum()))
        return scores

    def compare(self, prompt: Prompt, first: str, second: str) -> OrderVerdict:
        a, b = self.label_logprobs(render_template(self.template, prompt, first, second))
        if a != a or b != b:  # NaN
            raise JudgeOutputError("the judge model produced NaN label scores")
        return "first" if a > b else "second" if b > a else "tie"


class OpenAIJudge:
    """Any OpenAI-compatible completions endpoint (``vllm serve`` included), with the verdict
    constrained so that even a weak model yields a valid one:

    - ``verdict="logprobs"`` (default): the log-probabilities of the two labels, each scored as
      the last token of the prompt (``echo`` with ``logprobs``);
    - ``verdict="choice"``: choice-constrained generation (vLLM's ``structured_outputs``), the
      output being exactly one of the two labels.

    Output that is not a verdict raises :class:`JudgeOutputError` (retried, then counted as
    invalid); an unreachable endpoint raises the client's error, since that is no verdict at all."""

    def __init__(
        self,
        base_url: str,
        model: str,
        template: str = DEFAULT_TEMPLATE,
        labels: tuple[str, str] = (" A", " B"),
        api_key: str = "EMPTY",
        timeout: float = 60.0,
        verdict: Literal["logprobs", "choice"] = "logprobs",
    ):
        import httpx
        from openai import OpenAI

        if verdict not in ("logprobs", "choice"):
            raise ValueError(f"verdict must be logprobs or choice, got {verdict!r}")
        check_template(template)
        # No redirects: an allowed endpoint must not be able to send the worker somewhere else.
        http = httpx.Client(follow_redirects=False, timeout=timeout)
        # openai 3 annotates httpx2's client, and takes httpx's (a legacy client) at run time.
        self.client = OpenAI(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=2,
            http_client=http,  # type: ignore[arg-type]
        )
        self.base_url, self.timeout = base_url, timeout
        self.model, self.template, self.labels, self.verdict = model, template, labels, verdict
        digest = hashlib.sha256((template + "|".join(labels)).encode()).hexdigest()[:16]
        self.key = f"openai:{base_url}:{model}:{verdict}:{digest}"

    def _label_logprob(self, text: str, label: str) -> float:
        response = self.client.completions.create(
            model=self.model, prompt=text + label, max_tokens=1, temperature=0.0, echo=True, logprobs=1
        )
        logprobs = response.choices[0].logprobs if response.choices else None
        if logprobs is None or not logprobs.token_logprobs or len(logprobs.token_logprobs) < 2:
            raise JudgeOutputError("the endpoint returned no prompt log-probabilities")
        # The label's tokens: the prompt's tokens that start at or after the end of the text (a
        # label may be several tokens), before the one generated token.
        scored = list(zip(logprobs.text_offset or [], logprobs.token_logprobs, strict=False))[:-1]
        values = [value for offset, value in scored if offset >= len(text)] or logprobs.token_logprobs[-2:-1]
        if any(value is None for value in values):
            raise JudgeOutputError("the endpoint returned no log-probability for the label")
        return float(sum(values))

    def _choice(self, text: str) -> OrderVerdict:
        choices = [label.strip() for label in self.labels]
        response = self.client.completions.create(
            model=self.model,
            prompt=text + " ",
            max_tokens=8,
            temperature=0.0,
            extra_body={"structured_outputs": {"choice": choices}},
        )
        output = response.choices[0].text.strip() if response.choices else ""
        if output not in choices:
            raise JudgeOutputError(f"the endpoint answered {output[:40]!r}, not one of {choices}")
        return "first" if output == choices[0] else "second"

    def compare(self, prompt: Prompt, first: str, second: str) -> OrderVerdict:
        text = render_template(self.template, prompt, first, second)
        with endpoint_errors(self.base_url, self.model, self.timeout):
            if self.verdict == "choice":
                return self._choice(text)
            a, b = (self._label_logprob(text, label) for label in self.labels)
        return "first" if a > b else "second" if b > a else "tie"


@contextlib.contextmanager
def endpoint_errors(base_url: str, model: str, timeout: float):
    """The client's errors as ours: what another attempt may fix (:class:`JudgeEndpointError`) and
    what it cannot (:class:`JudgeEndpointRefused`). The message names the URL and the HTTP status
    only: the body is the server's, not the tenant's to read."""
    from openai import APIConnectionError, APIStatusError, APITimeoutError

    try:
        yield
    except APITimeoutError:
        raise JudgeEndpointError(f"the judge endpoint {base_url} timed out ({timeout:g} s)") from None
    except APIConnectionError:
        raise JudgeEndpointError(f"could not connect to the judge endpoint {base_url}") from None
    except APIStatusError as err:
        status = err.status_code
        if status in (408, 429) or status >= 500:
            raise JudgeEndpointError(f"the judge endpoint {base_url} answered HTTP {status}") from None
        raise JudgeEndpointRefused(
            f"the judge endpoint {base_url} refused the request with HTTP {status} "
            f"(check the judge's base_url, model ({model!r}) and key)"
        ) from None


class VerdictCache:
    """Verdicts on disk (JSON lines, appended): judging the same thing twice costs nothing, and a
    judge killed mid-way resumes from the verdicts it had written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._verdicts: dict[str, str] = {}
        self._lock = threading.Lock()  # comparisons run in several threads
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a writer that was killed mid-write
                self._verdicts[record["key"]] = record["verdict"]

    @staticmethod
    def key(judge_key: str, prompt: Prompt, first: str, second: str) -> str:
        return hashlib.sha256(json.dumps([judge_key, prompt, first, second]).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self._verdicts.get(key)

    def put(self, key: str, verdict: str) -> None:
        with self._lock:
            self._verdicts[key] = verdict
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"key": key, "verdict": verdict}) + "\n")


@dataclass
class SideBySide:
    """The result of judging responses A against responses B."""

    records: list[dict]  # per comparison: prompt_id, both order verdicts, outcome for A
    win_rate: WinRate | None  # of A over B; None when every comparison was invalid
    length_controlled: WinRate | None
    flip_rate: float  # share of valid comparisons whose verdict flipped with the order
    invalid: int
    judge_calls: int  # backend calls made (cache hits excluded)
    mean_length: dict[str, float] = field(default_factory=dict)
    usage: dict | None = None  # tokens (and cost) of a judge that counts them: the chat judge

    def to_dict(self) -> dict:
        out = asdict(self)
        out["records"] = len(self.records)
        return out


def pair_responses(first: list[dict], second: list[dict]) -> list[dict]:
    """Comparison items from two response sets (as :func:`gpo_core.generate.generate_responses`
    writes them), matched by (prompt id, sample): A is ``first``, B is ``second``. A
    conversational prompt stays a conversation: a chat judge sends it as messages."""
    theirs = {(r["prompt_id"], r.get("sample", 0)): r["response"] for r in second}
    items = []
    for record in first:
        key = (record["prompt_id"], record.get("sample", 0))
        if key in theirs:
            items.append(
                {
                    "prompt_id": record["prompt_id"],
                    "prompt": record["prompt"],
                    "a": record["response"],
                    "b": theirs[key],
                }
            )
    return items


_CALLS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="judge-call")


def call_until_stopped(call, should_stop: StopCheck | None, poll_s: float = 0.25):
    """``call()``; with ``should_stop``, in a helper thread while this one keeps asking it, so a
    stop is seen within ``poll_s`` even while a slow endpoint holds the call (which then finishes,
    bounded by the client's timeout, in the background, unobserved)."""
    if should_stop is None:
        return call()
    future = _CALLS.submit(call)
    while True:
        try:
            return future.result(timeout=poll_s)
        except concurrent.futures.TimeoutError:
            check(should_stop)


async def _judge_all(
    judge: Judge,
    comparisons: list[tuple[Prompt, str, str]],
    cache: VerdictCache | None,
    retries: int,
    concurrency: int,
    should_stop: StopCheck | None,
) -> list[tuple[str, int]]:
    """(verdict or "invalid", backend calls made) of every comparison, in order, each served from
    the cache or asked up to ``1 + retries`` times; at most ``concurrency`` in flight: on one
    event loop for a judge with ``acompare`` (a chat API: requests cost no thread), on that many
    threads for the others. A stop request is seen within a quarter second; the requests out are
    cancelled (a call on a thread cannot be: it finishes unobserved and its verdict is dropped)."""
    loop = asyncio.get_running_loop()
    native = isinstance(judge, AsyncJudge)
    client = judge.async_client() if isinstance(judge, AsyncJudge) else None
    threads = None if native else concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="judge")
    in_flight = asyncio.Semaphore(concurrency)

    async def compare(prompt: Prompt, first: str, second: str) -> OrderVerdict:
        if isinstance(judge, AsyncJudge):
            return await judge.acompare(client, prompt, first, second)
        return await loop.run_in_executor(threads, judge.compare, prompt, first, second)

    async def judge_once(prompt: Prompt, first: str, second: str) -> tuple[str, int]:
        key = VerdictCache.key(judge.key, prompt, first, second) if cache else ""
        if cache and (hit := cache.get(key)) is not None:
            return hit, 0
        async with in_flight:
            for calls in range(1, retries + 2):
                try:
                    verdict = await compare(prompt, first, second)
                except JudgeOutputError:
                    continue
                if cache:
                    cache.put(key, verdict)
                return verdict, calls
            return "invalid", retries + 1

    tasks = [asyncio.ensure_future(judge_once(*comparison)) for comparison in comparisons]
    everything = asyncio.gather(*tasks)
    try:
        while True:
            done, _ = await asyncio.wait({everything}, timeout=0.25)
            if done:
                return everything.result()
            if should_stop is not None:
                await asyncio.to_thread(check, should_stop)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(everything, return_exceptions=True)
        if client is not None:
            await client.close()
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


def _run_to_end(coroutine):
    """``asyncio.run(coroutine)``, also where this thread already runs an event loop (a notebook,
    an async service): then on a thread of its own, since a loop cannot be nested."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="judge-loop") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def side_by_side(
    judge: Judge,
    items: Sequence[dict],
    cache: VerdictCache | None = None,
    retries: int = 2,
    seed: int = 0,
    should_stop: StopCheck | None = None,
    concurrency: int = 1,
) -> SideBySide:
    """``items``: dicts with ``prompt_id``, ``prompt``, ``a`` and ``b`` (the two responses); up to
    ``concurrency`` comparisons in flight. ``should_stop`` is asked while they run (the verdicts
    so far stay in the cache)."""
    comparisons = [
        (item["prompt"], first, second)
        for item in items
        for first, second in ((item["a"], item["b"]), (item["b"], item["a"]))
    ]
    verdicts = _run_to_end(_judge_all(judge, comparisons, cache, retries, concurrency, should_stop))
    records, calls_made = [], 0
    for k, item in enumerate(items):
        (first_order, n1), (second_order, n2) = verdicts[2 * k], verdicts[2 * k + 1]
        calls_made += n1 + n2
        if "invalid" in (first_order, second_order):
            outcome = "invalid"
        else:
            # In A's terms: the first order puts A first, the second puts B first.
            a_first = {"first": "win", "second": "loss", "tie": "tie"}[first_order]
            b_first = {"first": "loss", "second": "win", "tie": "tie"}[second_order]
            outcome = a_first if a_first == b_first else "tie"
        flipped = {first_order, second_order} == {"first"} or {first_order, second_order} == {"second"}
        records.append(
            {
                "prompt_id": item["prompt_id"],
                "a_first": first_order,
                "b_first": second_order,
                "outcome": outcome,
                "flipped": flipped,
                "length_difference": len(item["a"].split()) - len(item["b"].split()),
            }
        )
    valid = [r for r in records if r["outcome"] != "invalid"]
    by_prompt: dict = {}
    for r in valid:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    groups = list(by_prompt.values())
    outcomes = [[r["outcome"] for r in g] for g in groups]
    differences = [[float(r["length_difference"]) for r in g] for g in groups]
    return SideBySide(
        records=records,
        win_rate=win_rate(outcomes, seed=seed) if groups else None,
        length_controlled=length_controlled_win_rate(outcomes, differences, resamples=500, seed=seed)
        if groups
        else None,
        flip_rate=sum(r["flipped"] for r in valid) / len(valid) if valid else 0.0,
        invalid=len(records) - len(valid),
        judge_calls=calls_made,
        mean_length={
            "a": sum(len(i["a"].split()) for i in items) / max(1, len(items)),
            "b": sum(len(i["b"].split()) for i in items) / max(1, len(items)),
        },
        usage=judge.usage.to_dict() if hasattr(judge, "usage") else None,
    )
