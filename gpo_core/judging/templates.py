"""Judge prompt templates: the built-in ones and a tenant's own, which is text with three slots and
nothing else (checked before use; rendered without ``str.format``)."""

from __future__ import annotations

import re

from gpo_core.conversation import Prompt, as_text

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
