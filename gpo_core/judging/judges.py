"""The judges: the built-in task's oracle, a local causal LM scoring the two labels, and any
OpenAI-compatible completions endpoint. (Chat-completions judges: :mod:`gpo_core.judging.chat`.)"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch

from gpo_core.conversation import Prompt, as_text
from gpo_core.judging.chat import judge_messages
from gpo_core.judging.comparison import ORDER_OF, JudgeOutputError, OrderVerdict
from gpo_core.judging.endpoints import endpoint_errors
from gpo_core.judging.templates import DEFAULT_TEMPLATE, check_template, render_template


class OracleTaskJudge:
    """The built-in task's oracle judge (``gpo_core.task.reward.OracleJudge``) as a judging-stage
    backend: deterministic (higher gold reward wins, equal ties) or sampled (Bradley-Terry)."""

    def __init__(
        self,
        task,
        mode: Literal["deterministic", "sampled"] = "deterministic",
        temperature: float = 0.5,
        seed: int = 0,
        reward: Literal["gold", "labeler"] = "gold",
    ):
        from gpo_core.task.reward import OracleJudge

        self.task = task
        self.oracle = OracleJudge(mode, temperature, seed, task.labeler_reward if reward == "labeler" else None)
        # Sampled verdicts are draws, not facts about the pair: never served from the cache.
        name = "oracle" if reward == "gold" else "oracle-labeler"
        self.key = f"{name}:{task.root.name}" if mode == "deterministic" else f"{name}-sampled:{id(self)}"

    def compare(self, prompt: Prompt, first: str, second: str) -> OrderVerdict:
        verdict = self.oracle.judge(self.task.document_for(as_text(prompt)), first, second)
        return ORDER_OF[verdict]


class LogprobJudge:
    """A local transformers causal LM that reads the template and scores the two labels by their
    log-probabilities as continuations of it: the verdict is always one of the labels (or a tie
    when they score the same). A label may be several tokens for this tokenizer (" A" often is,
    for a byte-level BPE): its score is the sum of its tokens' log-probabilities.

    A model with a chat template (an instruct model) is asked as it was trained to be asked: the
    request is the chat judge's messages rendered with its template, the labels (stripped) are the
    first tokens of its answer. A base model reads the template as plain text."""

    def __init__(self, model_dir: str | Path, template: str = DEFAULT_TEMPLATE, labels: tuple[str, str] = (" A", " B")):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        check_template(template)
        self.chat = bool(self.tokenizer.chat_template)
        if self.chat:
            labels = (labels[0].strip(), labels[1].strip())
        self.template, self.labels = template, labels
        self.label_ids = [self.tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
        if any(not ids for ids in self.label_ids) or self.label_ids[0] == self.label_ids[1]:
            raise ValueError(f"the labels {labels} must be two different, non-empty texts for this tokenizer")
        unknown = self.tokenizer.unk_token_id
        if unknown is not None and any(unknown in ids for ids in self.label_ids):
            raise ValueError(f"the labels {labels} are unknown to this tokenizer")
        mode = "chat" if self.chat else "text"
        digest = hashlib.sha256((str(model_dir) + template + "|".join(labels) + mode).encode()).hexdigest()[:16]
        self.key = f"logprob:{digest}"

    def request(self, prompt: Prompt, first: str, second: str) -> str:
        """What the model reads before its answer: the chat-rendered request, or the plain template."""
        if not self.chat:
            return render_template(self.template, prompt, first, second)
        messages = judge_messages(self.template, self.labels, "logprobs", prompt, first, second)
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    @torch.no_grad()
    def label_logprobs(self, text: str) -> list[float]:
        """log p(label | text) of each label, its tokens' log-probabilities summed."""
        ids = self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]  # a chat rendering has its own
        scores = []
        for label in self.label_ids:
            logits = self.model(input_ids=torch.tensor([ids + label])).logits[0, len(ids) - 1 : -1]
            scores.append(float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(label)[:, None]).sum()))
        return scores

    def compare(self, prompt: Prompt, first: str, second: str) -> OrderVerdict:
        a, b = self.label_logprobs(self.request(prompt, first, second))
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
