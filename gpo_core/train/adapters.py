"""LoRA for the training loop (``lora:`` in a spec): peft adapters on the policy, everything
else frozen.

The loop keeps calling the transformers model itself (peft injects the adapters into its linear
layers in place), so the shared-prompt forward, chunked log-probs and checkpointing work as for
a full fine-tune. The reference is the base model: its log-probs come from the cache as always,
and the KL trace scores pi_ref with the adapters switched off, so no second copy of the model is
ever loaded. Checkpoints hold the adapters only (``adapter_model.safetensors``, MBs for GBs);
the final folder holds the merged model, which every later stage (generation, vLLM, judging)
reads as any model folder, and the adapters alone in ``final/adapter``, which a vLLM engine
serving the base samples from without merging (:mod:`gpo_core.generate`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from gpo_core.models import FINAL_ADAPTER, write_adapter_base
from gpo_core.train.spec import LoraOptions

ADAPTER = FINAL_ADAPTER  # the final folder's subfolder with the adapters alone


def add_adapters(model: torch.nn.Module, options: LoraOptions) -> PeftModel:
    """New LoRA adapters on ``model`` (B = 0: the policy starts equal to the base); the base frozen."""
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,  # type: ignore[arg-type]  # peft annotates int; a float scales the same
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        task_type="SEQ_2_SEQ_LM" if getattr(model.config, "is_encoder_decoder", False) else "CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapters(model: torch.nn.Module, folder: Path) -> PeftModel:
    """The adapters of a checkpoint on ``model``, trainable again (a resumed run)."""
    return PeftModel.from_pretrained(model, folder, is_trainable=True)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_final(peft_model: PeftModel, folder: Path, base: Path) -> None:
    """The adapters alone in ``folder/adapter`` (with the digest of ``base``, the model folder they
    go on, for a vLLM engine that serves them unmerged), then the merged model in ``folder`` (for
    every stage that reads a model folder). Merging is in place, without a second copy of the
    weights: call it last, when the run is over."""
    peft_model.save_pretrained(str(folder / ADAPTER))
    write_adapter_base(folder / ADAPTER, base)
    peft_model.merge_and_unload().save_pretrained(folder)


class AdapterDisabledReference:
    """pi_ref as the policy with its adapters switched off: the same weights, no second copy."""

    def __init__(self, peft_model: PeftModel):
        self.peft_model = peft_model

    def get(self) -> torch.nn.Module:
        return self.peft_model.get_base_model()

    def scope(self) -> AbstractContextManager:
        return self.peft_model.disable_adapter()

    def release(self) -> None:
        pass
