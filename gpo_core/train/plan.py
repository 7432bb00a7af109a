"""What a training run needs per worker, before it starts: bytes of memory by kind and FLOPs per
step, from the model's configuration alone (the model is built on the meta device: no weights
are read, an 8B model is planned in a second).

The activation term is a count, not a guess: the elements a transformers decoder layer keeps for
the backward pass, per token, measured with autograd's saved-tensor hooks on Llama and Qwen2
shapes (``11.5 h + 4 i + kv`` for hidden size h, MLP size i and key/value width kv, within 1%;
about ``h`` per layer under gradient checkpointing, plus one layer's worth while it is replayed).
Attention goes through SDPA, which keeps no [length, length] scores. Everything is at the spec's
length limits: the largest micro-batch the run can see. ``tests/train/test_plan.py`` checks the
total against the peak memory of real runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from gpo_core.models import config_folder
from gpo_core.train.spec import LoraOptions, TrainingSpec

# Elements a decoder layer keeps for backward per token: 11.5 h + 4 i + kv (see the module docstring).
LAYER_HIDDEN, LAYER_MLP, LAYER_KV = 11.5, 4.0, 1.0
OUTSIDE_LAYERS = 3.0  # embeddings, final norm: x h per token
# Copies of the logits alive at once around the log-softmax (the logits, their log-softmax's
# saved input, the gradient), by peak RSS of real runs (tests/train/test_plan.py).
LOGITS_COPIES = 3
RUNTIME_BYTES = 500 * 2**20  # Python, torch, transformers and the data loaded: a CPU worker's floor (RSS)
GIB = 2**30


@dataclass
class ModelShape:
    parameters: int
    embedding_parameters: int
    layers: int
    hidden: int
    intermediate: int
    kv_width: int
    vocabulary: int
    factored_state: int  # Adafactor's state: rows + columns of each matrix, all of a vector
    block_parameters: int  # the largest transformer block (an FSDP unit)
    root_parameters: int  # outside the blocks: embeddings, final norm, head (FSDP's root unit)
    linears: tuple[tuple[str, int, int], ...] = ()  # (name, in, out) of each linear layer but the head


def adapter_parameters(shape: ModelShape, lora: LoraOptions) -> int:
    """LoRA's trainable parameters: r x (in + out) per targeted linear layer (peft's matching: the
    module's name or its last parts; ``all-linear``: every linear layer but the output head)."""
    targets = lora.target_modules

    def targeted(name: str) -> bool:
        return targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets)

    return sum(lora.r * (fan_in + fan_out) for name, fan_in, fan_out in shape.linears if targeted(name))


@dataclass
class Plan:
    """Bytes per worker by kind (``memory``), the largest micro-batch's tokens and FLOPs."""

    shape: ModelShape
    tokens_per_micro_batch: int
    scored_tokens_per_micro_batch: int
    flops_per_step: float  # model FLOPs of one optimizer step over all workers (no recompute)
    memory: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.memory.values())

    def fits(self, available: int) -> bool:
        return self.total <= available

    def as_dict(self) -> dict:
        return {
            "parameters": self.shape.parameters,
            "tokens_per_micro_batch": self.tokens_per_micro_batch,
            "flops_per_step": self.flops_per_step,
            "memory_bytes": dict(self.memory),
            "total_bytes": self.total,
            "notes": list(self.notes),
        }


def model_shape(folder: str) -> ModelShape:
    """Sizes of a model folder's architecture, from its config (built on the meta device)."""
    config = AutoConfig.from_pretrained(config_folder(folder))  # an adapter: its base's architecture
    loader = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        model = loader.from_config(config)
    parameters = list(model.parameters())  # tied weights appear once
    block_names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [sum(p.numel() for p in m.parameters()) for m in model.modules() if type(m).__name__ in block_names]
    text = config.get_text_config()
    hidden = getattr(text, "hidden_size", None) or text.d_model
    heads = getattr(text, "num_attention_heads", None) or text.num_heads
    head_dim = getattr(text, "head_dim", None) or getattr(text, "d_kv", None) or hidden // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    layers = getattr(text, "num_hidden_layers", None) or (text.num_layers + getattr(text, "num_decoder_layers", 0))
    return ModelShape(
        parameters=sum(p.numel() for p in parameters),
        embedding_parameters=model.get_input_embeddings().weight.numel(),
        layers=layers,
        hidden=hidden,
        intermediate=getattr(text, "intermediate_size", None) or text.d_ff,
        kv_width=2 * kv_heads * head_dim,
        vocabulary=text.vocab_size,
        factored_state=sum(p.shape[0] + p.shape[1] if p.dim() == 2 else p.numel() for p in parameters),
        block_parameters=max(blocks, default=0),
        root_parameters=sum(p.numel() for p in parameters) - sum(blocks),
        linears=tuple(
            (name, m.in_features, m.out_features)
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()
        ),
    )


def plan(spec: TrainingSpec, shape: ModelShape | None = None) -> Plan:
    """Memory per worker and FLOPs per step of ``spec`` at its length limits."""
    shape = shape or model_shape(spec.policy)
    n = shape.parameters
    weight_bytes = 2 if spec.precision == "bf16-pure" else 4
    activation_bytes = 4 if spec.precision == "fp32" else 2
    prompt, response = spec.max_prompt_length, spec.max_response_length
    tokens = spec.batch_size * (prompt + 2 * response)  # each prompt once, both responses
    scored = spec.batch_size * 2 * response
    per_token_layer = LAYER_HIDDEN * shape.hidden + LAYER_MLP * shape.intermediate + LAYER_KV * shape.kv_width
    if spec.gradient_checkpointing:
        kept = tokens * (shape.layers * shape.hidden + OUTSIDE_LAYERS * shape.hidden)
        replayed = tokens * per_token_layer  # one layer's activations while it runs again
        activations = (kept + replayed) * activation_bytes
    else:
        activations = tokens * (shape.layers * per_token_layer + OUTSIDE_LAYERS * shape.hidden) * activation_bytes
    logits_rows = min(spec.logprob_chunk or scored, scored)
    result = Plan(shape, tokens, scored, 0.0)
    memory = result.memory
    world = max(1, spec.workers)
    share = world if spec.strategy == "fsdp" else 1  # FSDP: each worker holds 1/N of every state
    memory["weights"] = n * weight_bytes // share
    if spec.lora is not None:  # only the adapters train; peft keeps them in fp32
        adapters = adapter_parameters(shape, spec.lora)
        memory["LoRA adapters"] = adapters * 4
        memory["gradients"] = adapters * 4
        memory["optimizer state"] = 2 * adapters * 4
    else:
        memory["gradients"] = n * weight_bytes // share
        if spec.optimizer == "adamw":
            memory["optimizer state"] = 2 * n * weight_bytes // share
        else:
            memory["optimizer state"] = shape.factored_state * 4 // share
    if spec.strategy == "fsdp":
        # Gathered at once: the root unit for the whole step (its weights and their gradients)
        # and two blocks (the one running and the next, prefetched).
        gathered = shape.root_parameters + 2 * shape.block_parameters
        memory["FSDP gathered weights"] = 2 * gathered * weight_bytes
    if spec.precision == "bf16":
        memory["bf16 weight copies (autocast)"] = n * 2 // share
    if spec.workers > 1 and spec.strategy == "ddp":
        memory["DDP gradient buckets"] = n * weight_bytes
    memory["activations"] = int(activations)
    memory["logits"] = LOGITS_COPIES * logits_rows * shape.vocabulary * 4
    # The backward's largest transients: the vocabulary projection's and the embeddings' weight
    # gradients, each [vocabulary, hidden], made whole before they are added into .grad.
    if spec.lora is None:
        memory["gradient transients (vocabulary)"] = 2 * shape.vocabulary * shape.hidden * weight_bytes
    if spec.eval_prompts and spec.trace_every and spec.lora is None:  # LoRA: pi_ref is the adapters off
        memory["reference model (KL trace)"] = n * weight_bytes
        result.notes.append("the KL trace keeps pi_ref loaded; without eval_prompts it is never held in training")
    if not spec.use_gpu:
        memory["runtime (Python, torch)"] = RUNTIME_BYTES
    result.flops_per_step = flops_per_token(shape, prompt + response) * tokens * spec.grad_accumulation * world
    if logits_rows == scored and scored * shape.vocabulary * 4 * LOGITS_COPIES > memory["activations"] / 2:
        result.notes.append(f"the logits are a large share: logprob_chunk: {max(64, scored // 16)} would bound them")
    return result


def flops_per_token(shape: ModelShape, context: int) -> float:
    """PaLM's model FLOPs of training on one token: 6 x the non-embedding parameters, plus
    attention's 12 x layers x hidden x context (recomputation not counted: this is the MFU
    numerator)."""
    return float(6 * (shape.parameters - shape.embedding_parameters) + 12 * shape.layers * shape.hidden * context)


SIZE_UNITS = {"gib": GIB, "gb": 10**9, "mib": 2**20, "mb": 10**6}


def parse_size(text: str) -> int:
    """``80GiB``, ``24 GB``, ``512MiB`` -> bytes; a clear error for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gib|gb|mib|mb)\s*", text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a memory size: give a number and GiB, GB, MiB or MB (e.g. 80GiB)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2)])


def worker_memory(spec: TrainingSpec) -> tuple[int, str]:
    """Memory one worker of ``spec`` may use on this machine, and where the figure comes from: the
    GPU's memory, or the memory available now shared by the run's workers (CPU)."""
    if spec.use_gpu and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        return properties.total_memory, f"{properties.name}'s memory"
    available = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    workers = max(1, spec.workers)
    shared = f" shared by {workers} workers" if workers > 1 else ""
    return available // workers, f"this machine's available memory{shared}"
