"""Conversational data: TRL's three preference formats, and turning prompts and responses into
token ids with the tokenizer's chat template.

A prompt, chosen or rejected value is either text (the *standard* format) or a list of messages
``{"role", "content"}`` (the *conversational* format). A pair may leave the prompt implicit: then
chosen and rejected are whole conversations (or texts) and the prompt is their common beginning,
as TRL's ``extract_prompt`` takes it.

Text is tokenized as it always was here: a prompt with the tokenizer's special tokens, a response
without them and with ``eos`` appended. A conversation is rendered with the chat template: the
prompt with ``add_generation_prompt=True``, the response as what the template writes after that
prompt for the whole conversation (its end-of-turn marker included), both tokenized without
special tokens, since the template writes them itself (no doubled BOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpo_core.errors import InputError

Prompt = str | list[dict]
ROLES = ("system", "user", "assistant", "tool")


class ConversationError(InputError):
    """A conversation the tokenizer or the template cannot render; the message says why."""


def is_conversation(value: Any) -> bool:
    return isinstance(value, list)


def message_problem(value: Any, name: str, last_role: str | None = None) -> str | None:
    """Why ``value`` is not a usable message list (None when it is). ``last_role``: the role the
    last message must have (a prompt ends with the user; a response is the assistant's)."""
    if not value:
        return f"field '{name}' is an empty list of messages"
    for i, message in enumerate(value):
        where = f"field '{name}', message {i}"
        if not isinstance(message, dict):
            return f"{where}: a message is an object with role and content, found {type(message).__name__}"
        if message.get("role") not in ROLES:
            return f"{where}: role must be one of {', '.join(ROLES)}, found {message.get('role')!r}"
        if not isinstance(message.get("content"), str):
            return f"{where}: content must be a string, found {type(message.get('content')).__name__}"
    if last_role is not None and value[-1]["role"] != last_role:
        return f"field '{name}': the last message must be the {last_role}'s, found {value[-1]['role']!r}"
    return None


def split_implicit(chosen: Prompt, rejected: Prompt) -> tuple[Prompt, Prompt, Prompt]:
    """``(prompt, chosen, rejected)`` from two whole conversations or texts: the prompt is their
    longest common beginning (whole messages; for texts, cut back to a space, as TRL does)."""
    if is_conversation(chosen) and is_conversation(rejected):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        while n > 0 and chosen[n - 1] != " " and n < len(chosen):  # do not split a word
            n -= 1
        return chosen[:n], chosen[n:], rejected[n:]
    raise ConversationError("chosen and rejected must both be texts or both be lists of messages")


def as_text(prompt: Prompt) -> str:
    """A prompt as plain text, for judges and reports: the text itself, or the conversation as
    ``Role: content`` paragraphs."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)


class ChatFormat:
    """Token ids of prompts and responses for one tokenizer (and chat template)."""

    def __init__(self, tokenizer, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)

    def _template(self) -> str:
        if not self.chat_template:
            raise ConversationError(
                "the data is conversational (lists of messages) but the tokenizer has no chat template; "
                "give one with the spec's chat_template (a Jinja template as in tokenizer_config.json)"
            )
        return self.chat_template

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(
                messages, chat_template=self._template(), tokenize=False, add_generation_prompt=generation_prompt
            )
        except TemplateError as err:
            raise ConversationError(f"the chat template cannot render this conversation: {err}") from None

    def render_prompt(self, prompt: Prompt) -> str:
        """The text the model sees before its response."""
        if isinstance(prompt, str):
            return prompt
        return self._render(prompt, generation_prompt=True)

    def prompt_ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(self.tokenizer(texts)["input_ids"] if texts else [])
        out = []
        for prompt in prompts:
            if isinstance(prompt, str):
                out.append(next(encoded))
            else:
                out.append(self.tokenizer(self.render_prompt(prompt), add_special_tokens=False)["input_ids"])
        return out

    def render_response(self, prompt: Prompt, response: Prompt) -> str:
        """What the template writes for ``response`` after ``prompt`` (conversations only)."""
        prompt_text = self.render_prompt(prompt)
        whole = self._render([*prompt, *response], generation_prompt=False)
        if not whole.startswith(prompt_text):
            raise ConversationError(
                "the chat template does not write the prompt (with the generation prompt) as the beginning "
                "of the whole conversation, so the response cannot be told apart; use another chat_template"
            )
        return whole[len(prompt_text) :]

    def response_ids(self, prompts: Sequence[Prompt], responses: Sequence[Prompt]) -> list[list[int]]:
        """Responses ending where generation ends: with ``eos`` (appended to a text response; a
        conversation's ends at the template's own end-of-turn token when that is ``eos``, with what
        the template writes after it, such as a newline, left out)."""
        eos = self.tokenizer.eos_token_id
        texts = [r for r in responses if isinstance(r, str)]
        encoded = iter(self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        out = []
        for prompt, response in zip(prompts, responses, strict=True):
            if isinstance(response, str):
                out.append([*next(encoded), eos])
                continue
            ids = self.tokenizer(self.render_response(prompt, response), add_special_tokens=False)["input_ids"]
            ids = ids[: len(ids) - ids[::-1].index(eos)] if eos in ids else [*ids, eos]
            out.append(ids)
        return out
