"""How good is a judge? Its verdicts on preference pairs whose answer is known (human labels, or
the built-in task's gold reward), each pair judged in both orders:

- agreement: the share of pairs where the judge prefers the labelled (chosen) response, ties and
  order-dependent verdicts counting one half, with a paired bootstrap interval over prompts;
- position bias: the share of pairs whose verdict followed the slot (the first response both
  times, or the second both times) rather than the content;
- tie and invalid rates; and, when the pairs carry gold rewards, agreement with the gold reward.

A judge whose position bias exceeds its signal (``2 * |agreement - 0.5|``) is flagged: its verdicts
say more about where a response stands than about what it says.
"""

from __future__ import annotations

from collections.abc import Sequence

from gpo_core.judging.comparison import Judge, VerdictCache, side_by_side


def response_text(value: str | list[dict]) -> str:
    """A response as the judge reads it: the text, or the contents of its messages."""
    return value if isinstance(value, str) else "\n\n".join(m["content"] for m in value)


def evaluate_judge(
    judge: Judge,
    pairs: Sequence[dict],
    cache: VerdictCache | None = None,
    retries: int = 2,
    concurrency: int = 1,
    seed: int = 0,
) -> dict:
    """The judge's figures on ``pairs`` (the common format; ``chosen`` is the labelled winner)."""
    items = [
        {
            "prompt_id": str(pair.get("id", i)),
            "prompt": pair["prompt"],
            "a": response_text(pair["chosen"]),
            "b": response_text(pair["rejected"]),
        }
        for i, pair in enumerate(pairs)
    ]
    result = side_by_side(judge, items, cache=cache, retries=retries, concurrency=concurrency, seed=seed)
    valid = [r for r in result.records if r["outcome"] != "invalid"]
    agreement = result.win_rate.to_dict() if result.win_rate else None
    signal = 2 * abs(agreement["rate"] - 0.5) if agreement else 0.0
    figures = {
        "pairs": len(pairs),
        "agreement": agreement,
        "position_bias": result.flip_rate,
        "tie_rate": sum(r["a_first"] == r["b_first"] == "tie" for r in valid) / len(valid) if valid else 0.0,
        "invalid_rate": result.invalid / len(pairs) if pairs else 0.0,
        "signal": signal,
        "position_bias_exceeds_signal": result.flip_rate > signal,
        "judge_calls": result.judge_calls,
        "usage": result.usage,
    }
    if pairs and all("chosen_reward" in p and "rejected_reward" in p for p in pairs):
        figures["gold_agreement"] = gold_agreement(result.records, pairs)
    return figures


def gold_agreement(records: list[dict], pairs: Sequence[dict]) -> float | None:
    """The share of pairs (ties one half) where the judge prefers the response of higher gold
    reward; pairs of equal reward and invalid verdicts are left out."""
    points = []
    for record, pair in zip(records, pairs, strict=True):
        if record["outcome"] == "invalid" or pair["chosen_reward"] == pair["rejected_reward"]:
            continue
        score = {"win": 1.0, "tie": 0.5, "loss": 0.0}[record["outcome"]]
        points.append(score if pair["chosen_reward"] > pair["rejected_reward"] else 1.0 - score)
    return sum(points) / len(points) if points else None
