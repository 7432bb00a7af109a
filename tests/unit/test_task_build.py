"""Building the task: artifacts loadable by transformers, deterministic, cached by content."""

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpo_core.data import load_preferences, load_prompts
from gpo_core.task.build import BuiltTask, build_task, task_settings
from gpo_core.task.model import SFTSettings

SMALL = task_settings("small", seed=3)  # the settings of the shared small_task fixture


@pytest.fixture
def built(small_task: BuiltTask) -> BuiltTask:
    return small_task


def digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_artifacts_load_with_transformers(built: BuiltTask) -> None:
    a = built.artifacts
    tokenizer = AutoTokenizer.from_pretrained(a.tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(a.model_dir)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer)
    assert 10_000 < a.parameters < 10_000_000
    prompt = load_prompts(a.eval_prompts)[0]["prompt"]
    ids = tokenizer(prompt)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids


def test_pairs_are_common_format_with_consistent_gold_rewards(built: BuiltTask) -> None:
    train = load_preferences(built.artifacts.train_pairs)
    held_out = load_preferences(built.artifacts.eval_pairs)
    assert train and held_out
    assert not {p["id"] for p in train} & {p["id"] for p in held_out}
    for pair in train + held_out:
        assert pair["chosen"] != pair["rejected"]
        assert pair["chosen_reward"] == built.reward(pair["prompt"], pair["chosen"])
        assert pair["rejected_reward"] == built.reward(pair["prompt"], pair["rejected"])
    eval_ids = {p["id"] for p in load_prompts(built.artifacts.eval_prompts)}
    assert not eval_ids & {p["id"] for p in train}


def test_quality_figures_are_ordered(built: BuiltTask) -> None:
    a = built.artifacts
    assert a.gold_mean_reward == 2.0
    assert a.random_mean_reward < a.gold_mean_reward
    assert a.ref_mean_reward < a.gold_mean_reward


def test_second_build_is_served_from_the_cache(built: BuiltTask) -> None:
    before = (built.root / "manifest.json").stat().st_mtime_ns
    again = build_task(built.root.parent, SMALL)
    assert again.cached and again.root == built.artifacts.root
    assert (built.root / "manifest.json").stat().st_mtime_ns == before
    other = replace(SMALL, label_temperature=0.25)
    assert other.key() != SMALL.key()  # any setting changes the content key


def test_same_seed_same_bytes(built: BuiltTask, tmp_path: Path) -> None:
    again = build_task(tmp_path, SMALL)
    assert not again.cached
    for name in ("train_pairs.jsonl", "eval_pairs.jsonl", "eval_prompts.jsonl", "documents.jsonl"):
        assert digest(Path(again.root) / name) == digest(built.root / name), name
    assert digest(Path(again.model_dir) / "model.safetensors") == digest(built.root / "model" / "model.safetensors")


def test_encoder_decoder_variant_builds_and_finetunes(tmp_path: Path) -> None:
    settings = task_settings("small", seed=0, architecture="t5")
    settings = replace(settings, sft=SFTSettings(steps=15, batch_size=16), pair_documents=40, eval_prompts=16)
    task = BuiltTask(build_task(tmp_path, settings).root)
    model = task.reference_model()
    assert model.config.is_encoder_decoder
    assert load_preferences(task.artifacts.train_pairs)


def test_unknown_size_and_architecture_are_refused() -> None:
    with pytest.raises(ValueError, match="size must be one of small, default"):
        task_settings("huge")
    with pytest.raises(ValueError, match="architecture must be 'llama' or 't5'"):
        build_task(None, task_settings("small", architecture="gpt2"))


def test_cli_task_build_json(built: BuiltTask) -> None:
    gpo = str(Path(sys.executable).parent / "gpo")
    args = [gpo, "task", "build", "--json", "--size", "small", "--seed", "3", "--out", str(built.root.parent)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("model_dir", "tokenizer_dir", "train_pairs", "eval_pairs", "eval_prompts"):
        assert Path(data[key]).exists()
    for key in ("ref_mean_reward", "random_mean_reward", "gold_mean_reward"):
        assert isinstance(data[key], float)
    assert data["cached"] is True


def test_a_moved_task_folder_still_resolves(built: BuiltTask, tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "elsewhere" / built.root.name
    shutil.copytree(built.root, moved)
    task = BuiltTask(moved)
    assert task.artifacts.root == str(moved)
    assert Path(task.artifacts.model_dir).parent == moved
    assert build_task(moved.parent, SMALL).cached


def test_proxy_labels_follow_their_closed_form() -> None:
    """Issue 31: the labeler's proxy (gold + bonus * words, then a share flipped) differs from the
    judge's gold reward by the settings, and only by them."""
    import math
    import random

    from gpo_core.task.build import LabelProxy

    first, second = (0.5, "a b c d e f"), (1.0, "a b")  # gold prefers the second, the proxy the first
    for proxy in (LabelProxy(), LabelProxy(length_bonus=0.3), LabelProxy(length_bonus=0.3, flip_rate=0.2)):
        rng = random.Random(0)
        draws = 40_000
        share = sum(proxy.prefers_first(rng, first, second, 0.5) for _ in range(draws)) / draws
        margin = (first[0] + proxy.length_bonus * 6) - (second[0] + proxy.length_bonus * 2)
        expected = 1 / (1 + math.exp(-margin / 0.5))
        expected = (1 - proxy.flip_rate) * expected + proxy.flip_rate * (1 - expected)
        assert share == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / draws))
    gold = random.Random(1)
    same = random.Random(1)
    for _ in range(100):  # gold labels draw once per pair: the labels of builds from before
        assert LabelProxy().prefers_first(gold, first, second, 0.5) == (same.random() < 1 / (1 + math.exp(1.0)))


def test_a_gold_labelled_task_keeps_its_cache_key() -> None:
    from dataclasses import asdict

    from gpo_core.task.build import FORMAT_VERSION, LabelProxy

    settings = task_settings("small", seed=3)
    before = {k: v for k, v in asdict(settings).items() if k != "proxy"}
    expected = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **before}, sort_keys=True).encode()).hexdigest()
    assert settings.key() == expected[:16]
    assert task_settings("small", seed=3, proxy=LabelProxy(length_bonus=0.3)).key() != settings.key()
