"""A judge behind an OpenAI-compatible chat completions API: GPT-4-class models and the many
services that copy the API (vLLM's server included), where the legacy completions endpoint with
``echo`` does not exist.

Verdict modes that work on real chat APIs:

- ``logprobs``: one answer token; the probability of each label among its ``top_logprobs``
  (AlpacaEval's weighted style: both labels looked up, a label not among them counts as ~0); the
  verdict is the likelier label, a tie when equal, no verdict when neither appears;
- ``rationale``: a short reasoning, then a last line ``Verdict: A`` (or B), parsed strictly;
- ``json``: ``{"verdict": "A"}`` under ``response_format`` (a JSON schema with the two labels).

Output that is not a verdict raises :class:`JudgeOutputError` (retried, then counted invalid).
429, 408 and 5xx answers are retried by the client with backoff, honouring ``Retry-After``; what
is left is a :class:`JudgeEndpointError`. Tokens used are counted (:class:`Usage`), and priced
when prices are given.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Literal

from gpo_core.conversation import Prompt
from gpo_core.judging.comparison import JudgeOutputError, OrderVerdict
from gpo_core.judging.endpoints import endpoint_errors
from gpo_core.judging.templates import check_template, render_template

ChatVerdict = Literal["logprobs", "rationale", "json"]
INSTRUCTIONS = {
    "logprobs": "Answer with the letter of the better response only: {a} or {b}.",
    "rationale": (
        "Explain your reasoning in at most three sentences, then give your verdict on a last line of "
        "its own, exactly 'Verdict: {a}' or 'Verdict: {b}'."
    ),
    "json": 'Answer with a JSON object {{"verdict": "{a}"}} or {{"verdict": "{b}"}}.',
}
MAX_TOKENS = {"logprobs": 1, "rationale": 256, "json": 32}
CONVERSATION_SYSTEM = (
    "You judge which of two candidate responses is the better next reply of the assistant in the "
    "conversation that follows. Its turns are given as they were exchanged; the request to judge "
    "comes after them."
)
CONVERSATION_ABOVE = "(the conversation above)"


def judge_messages(
    template: str, labels: tuple[str, str], verdict: ChatVerdict, prompt: Prompt, first: str, second: str
) -> list[dict]:
    """A judge request as chat messages (an API's, or a local model's chat template's). A text
    prompt: one user turn, the template (with the prompt and the two responses) and the mode's
    answer instructions. A conversation: the judge's role as the system turn, the conversation's
    own turns as they were, then the template (its prompt slot pointing at the conversation above)
    and the instructions as the last user turn; the conversation's system prompt is quoted in the
    judge's, a tool's output becomes a user turn."""
    instruction = INSTRUCTIONS[verdict].format(a=labels[0], b=labels[1])
    if isinstance(prompt, str):
        text = render_template(template, prompt, first, second)
        return [{"role": "user", "content": f"{text}\n\n{instruction}"}]
    system = CONVERSATION_SYSTEM
    quoted = [m["content"] for m in prompt if m["role"] == "system"]
    if quoted:
        system += " The assistant in it was instructed: " + " ".join(quoted)
    turns = [
        {"role": m["role"], "content": m["content"]}
        if m["role"] in ("user", "assistant")
        else {"role": "user", "content": f"[tool output] {m['content']}"}
        for m in prompt
        if m["role"] != "system"
    ]
    text = render_template(template, CONVERSATION_ABOVE, first, second)
    return [{"role": "system", "content": system}, *turns, {"role": "user", "content": f"{text}\n\n{instruction}"}]


@dataclass
class Usage:
    """Tokens a judge used, counted across threads; cost when prices (per million tokens) are set."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    price_input: float | None = None
    price_output: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, usage) -> None:
        with self._lock:
            self.requests += 1
            if usage is not None:
                self.prompt_tokens += usage.prompt_tokens or 0
                self.completion_tokens += usage.completion_tokens or 0

    def to_dict(self) -> dict:
        cost = None
        if self.price_input is not None and self.price_output is not None:
            cost = (self.prompt_tokens * self.price_input + self.completion_tokens * self.price_output) / 1e6
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": cost,
        }


class ChatJudge:
    def __init__(
        self,
        base_url: str,
        model: str,
        template: str,
        labels: tuple[str, str] = ("A", "B"),
        verdict: ChatVerdict = "logprobs",
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        prices: tuple[float, float] | None = None,
    ):
        import httpx
        from openai import OpenAI

        if verdict not in INSTRUCTIONS:
            raise ValueError(f"a chat judge's verdict is logprobs, rationale or json, got {verdict!r}")
        check_template(template)
        self.labels = (labels[0].strip(), labels[1].strip())
        if not all(self.labels) or self.labels[0] == self.labels[1]:
            raise ValueError(f"the labels {labels} must be two different, non-blank texts")
        http = httpx.Client(follow_redirects=False, timeout=timeout)  # an allowed endpoint may not redirect us
        self._key = api_key or "EMPTY"  # never read from the environment: see the caller's choice of key
        self.max_retries = max_retries
        self.client = OpenAI(
            base_url=base_url,
            api_key=self._key,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http,  # type: ignore[arg-type]  # openai 3 annotates httpx2's client, and takes httpx's
        )
        self.base_url, self.model, self.template = base_url, model, template
        self.verdict, self.timeout = verdict, timeout
        price_input, price_output = prices or (None, None)
        self.usage = Usage(price_input=price_input, price_output=price_output)
        digest = hashlib.sha256((template + "|".join(self.labels)).encode()).hexdigest()[:16]
        self.key = f"chat:{base_url}:{model}:{verdict}:{digest}"
        a, b = self.labels
        self._verdict_line = re.compile(rf"^\W*verdict\W*\s*({re.escape(a)}|{re.escape(b)})\W*$", re.IGNORECASE)

    def messages(self, prompt: Prompt, first: str, second: str) -> list[dict]:
        return judge_messages(self.template, self.labels, self.verdict, prompt, first, second)

    def _options(self) -> dict:
        options: dict = {"max_tokens": MAX_TOKENS[self.verdict], "temperature": 0.0}
        if self.verdict == "logprobs":
            options.update(logprobs=True, top_logprobs=20)
        elif self.verdict == "json":
            schema = {
                "type": "object",
                "properties": {"verdict": {"type": "string", "enum": list(self.labels)}},
                "required": ["verdict"],
                "additionalProperties": False,
            }
            options["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": schema, "strict": True},
            }
        return options

    def compare(self, prompt: Prompt, first: str, second: str) -> OrderVerdict:
        with endpoint_errors(self.base_url, self.model, self.timeout):
            response = self.client.chat.completions.create(
                model=self.model,
                messages=self.messages(prompt, first, second),  # type: ignore[arg-type]  # role/content dicts
                **self._options(),
            )
        return self.read(response)

    def async_client(self):
        """A client for :meth:`acompare`, to be used within one event loop and closed there."""
        import httpx
        from openai import AsyncOpenAI

        http = httpx.AsyncClient(follow_redirects=False, timeout=self.timeout)
        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            http_client=http,
        )

    async def acompare(self, client, prompt: Prompt, first: str, second: str) -> OrderVerdict:
        """:meth:`compare` on an :meth:`async_client`: many comparisons in flight on one thread."""
        with endpoint_errors(self.base_url, self.model, self.timeout):
            response = await client.chat.completions.create(
                model=self.model,
                messages=self.messages(prompt, first, second),
                **self._options(),
            )
        return self.read(response)

    def read(self, response) -> OrderVerdict:
        """The verdict in a chat completion (its tokens counted)."""
        self.usage.add(getattr(response, "usage", None))
        if not response.choices:
            raise JudgeOutputError("the endpoint returned no choices")
        choice = response.choices[0]
        if self.verdict != "logprobs":
            return self.parse(choice.message.content or "")
        a, b = self.label_probabilities(choice)
        if a == b == 0.0:
            raise JudgeOutputError(f"neither label {list(self.labels)} is among the answer's likeliest tokens")
        return "first" if a > b else "second" if b > a else "tie"

    def label_probabilities(self, choice) -> tuple[float, float]:
        """p(first label), p(second label) of the answer's first token; a label absent from the
        top log-probs counts as 0."""
        content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
        if not content:
            raise JudgeOutputError("the endpoint returned no log-probabilities (does it support logprobs?)")
        probabilities = [0.0, 0.0]
        for candidate in content[0].top_logprobs or []:
            token = candidate.token.strip()
            for i, label in enumerate(self.labels):
                if token == label:
                    probabilities[i] += math.exp(candidate.logprob)
        return probabilities[0], probabilities[1]

    def parse(self, text: str) -> OrderVerdict:
        """The verdict in an answer of this judge's mode (strict: anything else is no verdict)."""
        if self.verdict == "json":
            try:
                label = json.loads(text).get("verdict")
            except (json.JSONDecodeError, AttributeError):
                raise JudgeOutputError(f"the answer is not the JSON asked for: {text[:60]!r}") from None
        else:
            lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
            match = self._verdict_line.match(lines[-1]) if lines else None
            if match is None:
                raise JudgeOutputError(f"the answer does not end with a verdict line: {text[-60:]!r}")
            label = next(lab for lab in self.labels if lab.lower() == match.group(1).lower())
        if label not in self.labels:
            raise JudgeOutputError(f"the verdict {label!r} is not one of {list(self.labels)}")
        return "first" if label == self.labels[0] else "second"
