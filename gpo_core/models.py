"""Model folders: loading one, telling its kind, hashing its content, and the one cache root.

Every stage that touches a transformers folder (training, the reference cache, generation, the
judge, the built-in task) goes through here, so a model is loaded, classified and identified the
same way everywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedModel

from gpo_core.cache import cache_root  # noqa: F401  (re-exported: the cache's users import it from here)
from gpo_core.identity import file_digest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


def is_encoder_decoder(model: str | Path | PreTrainedModel | PretrainedConfig) -> bool:
    """True for encoder-decoder models (T5), false for causal LMs; takes a folder, model or config."""
    if isinstance(model, str | Path):
        config = AutoConfig.from_pretrained(model)
    else:
        config = model.config if isinstance(model, PreTrainedModel | torch.nn.Module) else model
    return bool(getattr(config, "is_encoder_decoder", False))


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM or an encoder-decoder model from a transformers folder, in ``dtype``."""
    config = AutoConfig.from_pretrained(folder)
    loader = AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModelForCausalLM
    return loader.from_pretrained(folder, dtype=dtype)


def model_digest(folder: str | Path) -> str:
    """Hash of a model folder's weights and configuration files (names and bytes)."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no model files (*.safetensors, *.bin, config.json)")
    for path in files:
        h.update(path.name.encode())
        h.update(bytes.fromhex(file_digest(path)))  # memoized: a large model is read once
    return h.hexdigest()
