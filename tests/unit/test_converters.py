"""The public-shape converters: Anthropic HH dialogues and raw UltraFeedback to TRL's
conversational format, checked against hand-made records; bad lines name file, line and field."""

import json
import re

import pytest

from gpo_core.converters import convert_hh, convert_ultrafeedback, convert_ultrafeedback_record
from gpo_core.data import DatasetError, load_preferences


def write(path, records) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def test_hh_dialogues_become_conversations_with_the_common_turns_as_prompt(tmp_path) -> None:
    shared = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?"
    write(tmp_path / "hh.jsonl", [{"chosen": shared + "\n\nAssistant: 6.", "rejected": shared + "\n\nAssistant: 7."}])
    report = convert_hh(tmp_path / "hh.jsonl", tmp_path / "out.jsonl")
    assert report.written == 1 and not report.skipped
    (pair,) = load_preferences(tmp_path / "out.jsonl")
    assert pair["prompt"] == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert pair["chosen"] == [{"role": "assistant", "content": "6."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "7."}]


def test_hh_bad_lines_name_the_line(tmp_path) -> None:
    good = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}
    write(tmp_path / "hh.jsonl", [good, {"chosen": "no turns", "rejected": "x"}, "{broken", good])
    with pytest.raises(DatasetError, match=r"hh.jsonl:2: field 'chosen' must be a dialogue"):
        convert_hh(tmp_path / "hh.jsonl", tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()  # all or nothing
    report = convert_hh(tmp_path / "hh.jsonl", tmp_path / "out.jsonl", skip_invalid=True)
    assert report.written == 2 and len(report.skipped) == 2 and "hh.jsonl:3: not valid JSON" in report.skipped[1]


def completion(text: str, score) -> dict:
    return {"response": text, "overall_score": score, "annotations": {}}


def test_ultrafeedback_takes_the_best_against_a_lower_one_seeded(tmp_path) -> None:
    raw = {"instruction": "Name a colour.", "completions": [
        completion("Blue.", 9.0), completion("Dog.", 2.0), completion("Red.", 9.0), completion("Seven.", 3.5),
    ]}  # fmt: skip
    pairs = [convert_ultrafeedback_record(raw, 1, seed) for seed in range(20)]
    assert all(p["chosen"] == [{"role": "assistant", "content": "Blue."}] for p in pairs)  # the first best
    assert {p["rejected"][0]["content"] for p in pairs} == {"Dog.", "Seven."}  # never the tied "Red."
    assert convert_ultrafeedback_record(raw, 1, 5) == convert_ultrafeedback_record(raw, 1, 5)
    write(tmp_path / "uf.jsonl", [raw])
    convert_ultrafeedback(tmp_path / "uf.jsonl", tmp_path / "out.jsonl", seed=5)
    (pair,) = load_preferences(tmp_path / "out.jsonl")
    assert pair["prompt"] == [{"role": "user", "content": "Name a colour."}] and pair["score_chosen"] == 9.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"completions": []}, "field 'instruction' is missing or empty"),
        ({"instruction": "x", "completions": [completion("a", "high")]},
         "field 'completions[0].overall_score' must be a number, found 'high'"),
        ({"instruction": "x", "completions": [completion("a", 5), completion("b", 5)]},
         "no two completions with different overall_score"),
    ],
)  # fmt: skip
def test_ultrafeedback_bad_records_say_why(tmp_path, raw, message) -> None:
    write(tmp_path / "uf.jsonl", [raw])
    with pytest.raises(DatasetError, match=re.escape(f"uf.jsonl:1: {message}")):
        convert_ultrafeedback(tmp_path / "uf.jsonl", tmp_path / "out.jsonl")
