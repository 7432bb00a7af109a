"""Convert OpenAI's summarize_from_feedback comparisons (the TL;DR preference data) to the common
format. One JSON object a line: ``info.post`` (or ``info.article``), ``info.title``,
``info.subreddit``, ``summaries[0|1].text``, ``choice`` (index of the preferred summary)."""

from __future__ import annotations

from pathlib import Path

from gpo_core.converters import ConversionReport, convert_jsonl

# The prompt of the TL;DR experiments (Stiennon et al. 2020; used by the DPO and GPO papers).
TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
ARTICLE_TEMPLATE = "ARTICLE: {post}\n\nTL;DR:"


def tldr_prompt(info: dict) -> str:
    post = info.get("post") or info.get("article")
    if not isinstance(post, str) or not post.strip():
        raise ValueError("info.post (or info.article) is missing or empty")
    if info.get("subreddit") and info.get("title"):
        return TEMPLATE.format(subreddit=info["subreddit"], title=info["title"].strip(), post=post.strip())
    return ARTICLE_TEMPLATE.format(post=post.strip())


def convert_record(raw: dict) -> dict:
    """One comparison to ``{"prompt", "chosen", "rejected", "id", "split"}``; ValueError says why not."""
    if not isinstance(raw, dict):
        raise ValueError(f"a line must hold a JSON object, found {type(raw).__name__}")
    info = raw.get("info")
    if not isinstance(info, dict):
        raise ValueError("field 'info' is missing or not an object")
    summaries = raw.get("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise ValueError("field 'summaries' must be a list of two summaries")
    texts = []
    for i, summary in enumerate(summaries):
        text = summary.get("text") if isinstance(summary, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"field 'summaries[{i}].text' is missing or empty")
        texts.append(" " + text.strip())
    choice = raw.get("choice")
    if choice not in (0, 1) or isinstance(choice, bool):
        raise ValueError(f"field 'choice' must be 0 or 1, found {choice!r}")
    return {
        "prompt": tldr_prompt(info),
        "chosen": texts[choice],
        "rejected": texts[1 - choice],
        "id": info.get("id"),
        "split": raw.get("split"),
    }


def convert_tldr(source: str | Path, destination: str | Path, skip_invalid: bool = False) -> ConversionReport:
    """Convert a whole file; the first bad line raises with its number unless ``skip_invalid``."""
    return convert_jsonl(source, destination, lambda raw, number: convert_record(raw), skip_invalid)
