"""Build the built-in task end to end, cached by content.

Every artifact is a function of the settings (seed, size, architecture and all knobs): the cache
key is a hash of them plus a format version. A build writes into a temporary folder and renames
it into place when complete, so a crash never leaves a half-built task, and a second build with
the same settings returns the cached one in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

from gpo_core.cache import cache_root
from gpo_core.data import load_records, write_jsonl
from gpo_core.generate import sample_texts
from gpo_core.stopping import StopCheck, check
from gpo_core.task.corpus import CorpusSettings, Document, make_documents, make_vocabulary
from gpo_core.task.model import (
    MAX_SUMMARY_TOKENS,
    ModelSettings,
    SFTSettings,
    make_model,
    parameter_count,
    supervised_finetune,
)
from gpo_core.task.reward import bradley_terry_probability, gold_reward, summary_words
from gpo_core.task.tokenizer import build_tokenizer

FORMAT_VERSION = 3  # 3: the gold reward is 2 x ROUGE-L F1, labels at temperature 0.1
SIZES = ("small", "default", "paper")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LabelProxy:
    """How the labeler's reward differs from the gold reward the oracle judge uses. Preference labels
    are Bradley-Terry draws from ``gold + length_bonus * words`` (a labeler who likes longer answers,
    as human and AI raters often do), then a ``flip_rate`` share of them is flipped at random. With
    both 0 the labels follow the judge's own reward, and following them harder can only please the
    judge: no over-optimization can show."""

    length_bonus: float = 0.0
    flip_rate: float = 0.0

    def reward(self, gold: float, summary: str) -> float:
        return gold + self.length_bonus * len(summary_words(summary))

    def prefers_first(
        self, rng: random.Random, first: tuple[float, str], second: tuple[float, str], temperature: float
    ) -> bool:
        """One label for two (gold reward, summary) responses: a Bradley-Terry draw on the proxy
        rewards, flipped with probability ``flip_rate``. (With gold labels, one draw of ``rng``:
        the labels of builds from before.)"""
        proxies = self.reward(*first), self.reward(*second)
        wins = rng.random() < bradley_terry_probability(*proxies, temperature)
        if self.flip_rate and rng.random() < self.flip_rate:
            wins = not wins
        return wins


@dataclass(frozen=True)
class TaskSettings:
    seed: int = 0
    size: str = "default"
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    sft_documents: int = 4000
    pair_documents: int = 2400  # one pair per document, split into train and eval pairs
    eval_pair_fraction: float = 1 / 6
    eval_prompts: int = 256
    behaviour_temperature: float = 1.0  # mu: the SFT policy sampled at this temperature
    label_temperature: float = 0.1  # Bradley-Terry: P(a > b) = sigmoid((r_a - r_b) / T)
    summary_tokens: int = MAX_SUMMARY_TOKENS  # new tokens when sampling pairs and quality figures
    proxy: LabelProxy = field(default_factory=LabelProxy)

    def key(self) -> str:
        settings = asdict(self)
        if self.proxy == LabelProxy():  # gold labels: the key (and cached builds) of before
            del settings["proxy"]
        text = json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def task_settings(size: str = "default", seed: int = 0, architecture: str = "llama", **overrides) -> TaskSettings:
    """The settings of a named size; any field can be overridden."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    settings = TaskSettings(seed=seed, size=size, model=ModelSettings(architecture=architecture))
    if size == "small":
        settings = replace(
            settings,
            corpus=CorpusSettings(topic_words=40, filler_words=80, min_words=20, max_words=40),
            model=ModelSettings(architecture=architecture, hidden=64, layers=2, heads=2, intermediate=176),
            sft=SFTSettings(steps=120, batch_size=32, lr=5e-3, warmup=10),
            sft_documents=600,
            pair_documents=240,
            eval_prompts=48,
        )
    if size == "paper":  # the reproduction's task: sentences to summarize, intervals of about +-0.02
        corpus = CorpusSettings(
            topic_words=120,
            filler_words=160,
            attribute_words=60,
            min_words=30,
            max_words=50,
            min_salient=3,
            max_salient=5,
            salient_repeats=(2, 3),
        )
        settings = replace(
            settings,
            corpus=corpus,
            model=ModelSettings(architecture=architecture, hidden=96, layers=3, heads=3, intermediate=256),  # head 32
            sft=SFTSettings(steps=3000, batch_size=32, lr=3e-3, warmup=20, noise=0.5, max_corruptions=2),
            sft_documents=3000,
            pair_documents=3000,
            eval_prompts=768,
            summary_tokens=24,
        )
    return replace(settings, sft=replace(settings.sft, seed=seed), **overrides)


@dataclass
class TaskArtifacts:
    """Paths and quality figures of a built task (the manifest)."""

    root: str
    model_dir: str
    tokenizer_dir: str
    train_pairs: str
    eval_pairs: str
    eval_prompts: str
    documents: str
    ref_mean_reward: float
    random_mean_reward: float
    gold_mean_reward: float
    ref_greedy_mean_reward: float
    parameters: int
    build_seconds: float
    pairs_dropped: dict[str, int]  # sampled pairs not kept, by reason (identical, empty)
    settings: dict = field(default_factory=dict)
    # The share of labels (pairs of unequal gold reward) whose chosen response has the higher gold
    # reward: how far the labeler's proxy is from the judge's gold (None in builds from before).
    label_gold_agreement: float | None = None
    cached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def build_task(
    out: str | Path | None = None,
    settings: TaskSettings | None = None,
    progress: Progress | None = None,
    should_stop: StopCheck | None = None,
) -> TaskArtifacts:
    """Build (or return the cached) task under ``out/<settings key>/``. ``should_stop`` is asked
    at every fine-tuning step and sampling batch: a build can be cancelled (:class:`Stopped`,
    nothing left behind)."""
    settings = settings or task_settings()
    say = progress or (lambda message: None)
    root = Path(out) if out is not None else cache_root() / "tasks"
    final = root / f"{settings.size}-{settings.key()}"
    manifest = final / "manifest.json"
    if manifest.exists():
        return _read_manifest(final)
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(root, final.name)
    work = root / f".{final.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        artifacts = _build(work, final, settings, say, should_stop)
        (work / "manifest.json").write_text(json.dumps(artifacts.to_dict(), indent=2))
        try:
            work.rename(final)
        except OSError:  # another process finished the same build first: use theirs
            shutil.rmtree(work, ignore_errors=True)
            return _read_manifest(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return artifacts


ARTIFACT_FILES = {
    "model_dir": "model",
    "tokenizer_dir": "tokenizer",
    "train_pairs": "train_pairs.jsonl",
    "eval_pairs": "eval_pairs.jsonl",
    "eval_prompts": "eval_prompts.jsonl",
    "documents": "documents.jsonl",
}


def _read_manifest(root: Path, cached: bool = True) -> TaskArtifacts:
    """The manifest with paths resolved against where the folder is now (it may have moved)."""
    data = json.loads((root / "manifest.json").read_text())
    paths = {key: str(root / name) for key, name in ARTIFACT_FILES.items()}
    return TaskArtifacts(**{**data, **paths, "root": str(root), "cached": cached})


def _remove_abandoned_builds(root: Path, name: str) -> None:
    """Folders of builds whose process was killed (no cleanup ran) are removed."""
    for folder in root.glob(f".{name}.building-*"):
        pid = int(folder.name.rsplit("-", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


def _build(
    work: Path, final: Path, settings: TaskSettings, say: Progress, should_stop: StopCheck | None
) -> TaskArtifacts:
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    vocabulary = make_vocabulary(settings.seed, settings.corpus)
    tokenizer = build_tokenizer(vocabulary)
    tokenizer.save_pretrained(work / "tokenizer")

    documents = {
        split: make_documents(settings.seed, count, split, vocabulary, settings.corpus)
        for split, count in (
            ("sft", settings.sft_documents),
            ("pairs", settings.pair_documents),
            ("eval", settings.eval_prompts),
        )
    }
    write_jsonl(work / "documents.jsonl", (d.to_dict() for split in documents.values() for d in split))

    model = make_model(settings.model, tokenizer, settings.seed)
    say(f"supervised fine-tuning of pi_ref ({parameter_count(model) / 1e6:.2f}M parameters)")
    every = max(1, settings.sft.steps // 10)

    def sft_progress(step: int, loss: float) -> None:
        check(should_stop)
        if step % every == 0:
            say(f"sft step {step}/{settings.sft.steps} loss {loss:.3f}")

    supervised_finetune(model, tokenizer, documents["sft"], vocabulary, settings.sft, progress=sft_progress)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")  # a self-contained folder, as vLLM and trainers expect

    def sample(prompts: list[str], temperature: float, seed: int) -> list[str]:
        return sample_texts(
            model,
            tokenizer,
            prompts,
            temperature,
            max_new_tokens=settings.summary_tokens,
            seed=seed,
            should_stop=should_stop,
        )

    say("sampling preference pairs from mu")
    pair_docs = documents["pairs"]
    prompts = [d.prompt for d in pair_docs]
    first = sample(prompts, settings.behaviour_temperature, settings.seed * 2 + 1)
    second = sample(prompts, settings.behaviour_temperature, settings.seed * 2 + 2)
    labels = random.Random(f"labels-{settings.seed}")
    pairs, dropped = [], {"identical": 0, "empty": 0}
    for doc, a, b in zip(pair_docs, first, second, strict=True):
        if a == b:  # identical responses carry no preference and give rho = 0 for ever
            dropped["identical"] += 1
            continue
        if not a or not b:  # the common format has no empty responses
            dropped["empty"] += 1
            continue
        ra, rb = gold_reward(doc, a), gold_reward(doc, b)
        a_wins = settings.proxy.prefers_first(labels, (ra, a), (rb, b), settings.label_temperature)
        chosen, rejected = (a, b) if a_wins else (b, a)
        pairs.append(
            {
                "id": doc.id,
                "prompt": doc.prompt,
                "chosen": chosen,
                "rejected": rejected,
                "chosen_reward": ra if a_wins else rb,  # gold
                "rejected_reward": rb if a_wins else ra,
            }
        )
    n_eval = max(1, round(len(pairs) * settings.eval_pair_fraction))
    write_jsonl(work / "train_pairs.jsonl", pairs[n_eval:])
    write_jsonl(work / "eval_pairs.jsonl", pairs[:n_eval])

    eval_docs = documents["eval"]
    write_jsonl(work / "eval_prompts.jsonl", ({"id": d.id, "prompt": d.prompt} for d in eval_docs))
    say("measuring quality on the evaluation prompts")
    eval_prompts = [d.prompt for d in eval_docs]
    sampled = sample(eval_prompts, 1.0, settings.seed + 7)
    greedy = sample(eval_prompts, 0.0, 0)
    rng = random.Random(f"random-policy-{settings.seed}")
    random_summaries = [" ".join(rng.choices(vocabulary.words, k=rng.randint(1, 6))) for _ in eval_docs]

    def mean_reward(summaries: list[str]) -> float:
        return round(statistics.fmean(gold_reward(d, s) for d, s in zip(eval_docs, summaries, strict=True)), 4)

    return TaskArtifacts(
        root=str(final),
        model_dir=str(final / ARTIFACT_FILES["model_dir"]),
        tokenizer_dir=str(final / ARTIFACT_FILES["tokenizer_dir"]),
        train_pairs=str(final / ARTIFACT_FILES["train_pairs"]),
        eval_pairs=str(final / ARTIFACT_FILES["eval_pairs"]),
        eval_prompts=str(final / ARTIFACT_FILES["eval_prompts"]),
        documents=str(final / ARTIFACT_FILES["documents"]),
        ref_mean_reward=mean_reward(sampled),
        random_mean_reward=mean_reward(random_summaries),
        gold_mean_reward=mean_reward([d.reference_summary for d in eval_docs]),
        ref_greedy_mean_reward=mean_reward(greedy),
        parameters=parameter_count(model),
        build_seconds=round(time.perf_counter() - started, 1),
        pairs_dropped=dropped,
        label_gold_agreement=_gold_agreement(pairs),
        settings=asdict(settings),
    )


def _gold_agreement(pairs: list[dict]) -> float | None:
    decided = [p for p in pairs if p["chosen_reward"] != p["rejected_reward"]]
    if not decided:
        return None
    return round(sum(p["chosen_reward"] > p["rejected_reward"] for p in decided) / len(decided), 4)


class BuiltTask:
    """A built task opened for use: documents by id and by prompt, the gold reward, the policy."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.root}: not a built task (no manifest.json)")
        self.artifacts = _read_manifest(self.root)
        self.documents: dict[str, Document] = {}
        self._by_prompt: dict[str, Document] = {}
        for record in load_records(self.root / "documents.jsonl", fields=("id",)).records:
            doc = Document(
                record["id"],
                tuple(record["words"]),
                tuple(record["salient"]),
                tuple(record["distractors"]),
                tuple(record.get("attributes", ())),
            )
            self.documents[doc.id] = doc
            self._by_prompt[doc.prompt] = doc

    def document_for(self, prompt: str) -> Document:
        try:
            return self._by_prompt[prompt]
        except KeyError:
            raise KeyError(f"prompt is not one of this task's documents: {prompt[:60]!r}...") from None

    def reward(self, prompt: str, summary: str) -> float:
        return gold_reward(self.document_for(prompt), summary)

    def labeler_reward(self, document: Document, summary: str) -> float:
        """The labeler's proxy reward of ``summary`` (what the task's preference labels were drawn
        from): the gold reward, plus the task's length bonus."""
        proxy = LabelProxy(**self.artifacts.settings.get("proxy", {}))
        return proxy.reward(gold_reward(document, summary), summary)

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return PreTrainedTokenizerFast.from_pretrained(self.artifacts.tokenizer_dir)

    def reference_model(self):
        architecture = self.artifacts.settings["model"]["architecture"]
        loader = AutoModelForSeq2SeqLM if architecture == "t5" else AutoModelForCausalLM
        return loader.from_pretrained(self.artifacts.model_dir)
