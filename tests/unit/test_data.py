"""Loading and validating the common preference format; the TL;DR converter."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpo_core.data import DatasetError, load_preferences, load_prompts, load_records, write_jsonl
from gpo_core.tldr import convert_tldr

GOOD = {"prompt": "p", "chosen": " a", "rejected": " b", "score": 1}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_roundtrip_keeps_extra_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD, {**GOOD, "prompt": "q"}])
    assert load_preferences(path) == [GOOD, {**GOOD, "prompt": "q"}]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "p", "chosen": "a"}', "pairs.jsonl:2: field 'rejected' is missing"),
        ('{"prompt": "p", "chosen": "  ", "rejected": "b"}', "pairs.jsonl:2: field 'chosen' is empty"),
        (
            '{"prompt": 3, "chosen": "a", "rejected": "b"}',
            "pairs.jsonl:2: field 'prompt' must be a string or a list of messages, found int",
        ),
        ('{"prompt": "p", "chosen": "a", "rejected": null}', "pairs.jsonl:2: field 'rejected' is missing"),
        ('["p", "a", "b"]', "pairs.jsonl:2: a record must be a JSON object, found list"),
        ('{"prompt": "p", "chosen": "a"', "pairs.jsonl:2: not valid JSON"),
    ],
)
def test_bad_jsonl_lines_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(DatasetError) as raised:
        load_preferences(path)
    assert message in str(raised.value)


def test_skip_invalid_counts_what_it_skipped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(GOOD), "{oops", "", json.dumps({"prompt": "p"})])
    report = load_records(path, skip_invalid=True)
    assert len(report.records) == 1
    assert [s.split(": ", 1)[0] for s in report.skipped] == [f"{path}:2", f"{path}:4"]


def test_parquet_and_datasets_folder(tmp_path: Path) -> None:
    import datasets

    rows = [GOOD, {**GOOD, "prompt": "q"}]
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(tmp_path / "pairs.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved_dict"))
    assert load_preferences(tmp_path / "pairs.parquet") == rows
    assert load_preferences(tmp_path / "saved") == rows
    assert load_preferences(tmp_path / "saved_dict") == rows

    bad = datasets.Dataset.from_list([GOOD, {**GOOD, "chosen": ""}])
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DatasetError, match=r"bad.parquet: row 1: field 'chosen' is empty"):
        load_preferences(tmp_path / "bad.parquet")


def test_unusable_paths(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_preferences(tmp_path / "missing.jsonl")
    (tmp_path / "pairs.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_preferences(tmp_path / "pairs.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DatasetError, match="not one written by datasets"):
        load_preferences(tmp_path / "folder")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DatasetError, match="no valid records"):
        load_preferences(tmp_path / "empty.jsonl")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_preferences(tmp_path / "broken.parquet")


def test_prompts_need_only_a_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "x"}])
    assert load_prompts(path) == [{"id": "a", "prompt": "x"}]


# --- the TL;DR converter, on a file written by hand in OpenAI's comparisons format -------------


def comparison(choice, post="My cat ate my homework.", **overrides) -> str:
    record = {
        "info": {"id": "t3_1", "post": post, "title": "Help", "subreddit": "cats"},
        "summaries": [{"text": " Cat ate homework.", "policy": "ref"}, {"text": "Homework is gone", "policy": "sup"}],
        "choice": choice,
        "split": "train",
        "worker": "w1",
    }
    record.update(overrides)
    return json.dumps(record)


def test_convert_tldr(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "comparisons.jsonl", [comparison(0), comparison(1)])
    report = convert_tldr(source, tmp_path / "out.jsonl")
    assert report.written == 2 and not report.skipped
    first, second = load_preferences(tmp_path / "out.jsonl")
    assert first["prompt"] == "SUBREDDIT: r/cats\n\nTITLE: Help\n\nPOST: My cat ate my homework.\n\nTL;DR:"
    assert (first["chosen"], first["rejected"]) == (" Cat ate homework.", " Homework is gone")
    assert (second["chosen"], second["rejected"]) == (" Homework is gone", " Cat ate homework.")
    assert first["id"] == "t3_1" and first["split"] == "train"


def test_convert_tldr_article_prompt(tmp_path: Path) -> None:
    record = json.dumps(
        {"info": {"id": "cnn", "article": "Markets rose."}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 1}
    )
    convert_tldr(write_lines(tmp_path / "c.jsonl", [record]), tmp_path / "o.jsonl")
    (row,) = load_preferences(tmp_path / "o.jsonl")
    assert row["prompt"] == "ARTICLE: Markets rose.\n\nTL;DR:" and row["chosen"] == " b"


MALFORMED = [
    ("{not json", "c.jsonl:2: not valid JSON"),
    (comparison(2), "c.jsonl:2: field 'choice' must be 0 or 1, found 2"),
    (comparison(0, post=""), "c.jsonl:2: info.post (or info.article) is missing or empty"),
    (comparison(0, summaries=[{"text": "only one"}]), "c.jsonl:2: field 'summaries' must be a list of two"),
    (comparison(0, summaries=[{"text": "a"}, {"policy": "x"}]), "c.jsonl:2: field 'summaries[1].text' is missing"),
    (json.dumps({"summaries": [], "choice": 0}), "c.jsonl:2: field 'info' is missing"),
]


@pytest.mark.parametrize(("line", "message"), MALFORMED)
def test_convert_tldr_malformed_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    source = write_lines(tmp_path / "c.jsonl", [comparison(0), line, comparison(1)])
    with pytest.raises(DatasetError) as raised:
        convert_tldr(source, tmp_path / "o.jsonl")
    assert message in str(raised.value)
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


def test_convert_tldr_skip_invalid_counts(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "c.jsonl", [comparison(0)] + [line for line, _ in MALFORMED] + [comparison(1)])
    report = convert_tldr(source, tmp_path / "o.jsonl", skip_invalid=True)
    assert report.written == 2
    assert len(report.skipped) == len(MALFORMED)
    assert report.skipped[0].startswith(f"{source}:2:")


def test_cli_convert_and_check(tmp_path: Path) -> None:
    gpo = str(Path(sys.executable).parent / "gpo")
    source = write_lines(tmp_path / "c.jsonl", [comparison(0), "{broken", comparison(1)])
    failed = subprocess.run(
        [gpo, "data", "convert-tldr", str(source), str(tmp_path / "o.jsonl")], capture_output=True, text=True
    )
    assert failed.returncode == 2 and "c.jsonl:2: not valid JSON" in failed.stderr
    assert "Traceback" not in failed.stderr
    skipped = subprocess.run(
        [gpo, "data", "convert-tldr", str(source), str(tmp_path / "o.jsonl"), "--skip-invalid"],
        capture_output=True,
        text=True,
    )
    assert skipped.returncode == 0 and "wrote 2 pairs" in skipped.stdout and "skipped 1" in skipped.stderr
    checked = subprocess.run([gpo, "data", "check", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert checked.returncode == 0 and "2 valid preference pairs" in checked.stdout


def test_data_check_flags_pairs_with_chosen_equal_to_rejected(tmp_path) -> None:
    gpo = str(Path(sys.executable).parent / "gpo")
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "same", "rejected": "same "}]
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    checked = subprocess.run([gpo, "data", "check", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0 and "2 valid preference pairs" in checked.stdout
    assert "1 pairs have chosen == rejected (records 2)" in checked.stderr


def test_bytes_that_are_not_utf8_name_the_line(tmp_path) -> None:
    """Found by fuzzing the upload endpoint: binary content was a UnicodeDecodeError (a 500)."""
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b'{"prompt": "p", "chosen": "c", "rejected": "r"}\n\x89PNG\r\n')
    with pytest.raises(DatasetError, match=r"binary.jsonl:2: not UTF-8 text \(byte 1 of the line\)"):
        load_preferences(path)
