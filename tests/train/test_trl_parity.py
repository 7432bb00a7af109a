"""Loss parity with TRL: with identical initial weights and batches, our logistic loss equals TRL
DPOTrainer's sigmoid loss step for step (within 1e-4 over the first 10 steps)."""

import random
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gpo_core.data import write_jsonl
from gpo_core.task.tokenizer import word_level_tokenizer
from gpo_core.train.loop import train
from gpo_core.train.metrics import ListSink
from gpo_core.train.spec import TrainingSpec

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[bench]'); CI installs it")

PAIRS, STEPS, BETA, LR = 8, 10, 0.1, 1e-3


@pytest.fixture
def model_and_pairs(tmp_path: Path) -> Path:
    tokenizer = word_level_tokenizer([f"w{i}" for i in range(60)], prepend_bos=False)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rng = random.Random(0)

    def text(low: int, high: int) -> str:
        return " ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(low, high)))

    rows = [{"prompt": text(5, 20), "chosen": " " + text(2, 8), "rejected": " " + text(2, 8)} for _ in range(PAIRS)]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    return tmp_path


def trl_losses(folder: Path) -> list[float]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    recorded: list[float] = []

    class RecordingDPOTrainer(DPOTrainer):
        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            recorded.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

    config = DPOConfig(
        output_dir=str(folder / "trl"), per_device_train_batch_size=PAIRS, max_steps=STEPS, learning_rate=LR,
        beta=BETA, loss_type="sigmoid", optim="adamw_torch", lr_scheduler_type="constant", weight_decay=0.0,
        max_grad_norm=1.0, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
        gradient_checkpointing=False, max_length=None, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = RecordingDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder / "model"),
        args=config,
        train_dataset=load_dataset("json", data_files=str(folder / "pairs.jsonl"), split="train"),
        processing_class=AutoTokenizer.from_pretrained(folder / "model"),
    )
    trainer.train()
    return recorded


def our_losses(folder: Path) -> list[float]:
    spec = TrainingSpec(
        policy=str(folder / "model"), dataset=str(folder / "pairs.jsonl"), output_dir=str(folder / "ours"),
        cache_dir=str(folder / "cache"), loss="logistic", beta=BETA, lr=LR, batch_size=PAIRS, steps=STEPS,
        schedule="constant", weight_decay=0.0, max_grad_norm=1.0,
    )  # fmt: skip
    sink = ListSink()
    train(spec, sink)
    return [r["loss"] for r in sink.records if r["kind"] == "step"]


def test_logistic_loss_equals_trl_sigmoid_step_for_step(model_and_pairs: Path) -> None:
    # Every step sees the whole 8-pair dataset as its batch, so both trainers see the same batches
    # whatever order their samplers choose.
    ours, theirs = our_losses(model_and_pairs), trl_losses(model_and_pairs)
    assert len(ours) == len(theirs) == STEPS
    assert ours[-1] < ours[0] - 1e-3  # the weights really moved
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert a == pytest.approx(b, abs=1e-4), f"step {step}: ours {a} vs TRL {b}"
