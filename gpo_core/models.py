"""Model folders: loading one, telling its kind, hashing its content, and the one cache root.

Every stage that touches a transformers folder (training, the reference cache, generation, the
judge, the built-in task) goes through here, so a model is loaded, classified and identified the
same way everywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from gpo_core.identity import file_digest
from gpo_core.specfile import ADAPTER_CONFIG

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


def is_adapter(folder: str | Path) -> bool:
    """True for a peft adapter folder (LoRA weights on a base model named in its config)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


FINAL_ADAPTER = "adapter"  # a LoRA run's final folder keeps its adapters alone here
# In an adapter folder, written by this platform only (training; the control service at upload,
# which refuses an upload that carries one): the base model's folder and content digest.
ADAPTER_BASE_RECORD = "gpo_base.json"


def adapter_base(folder: str | Path) -> Path:
    """The base model folder of an adapter folder. Where the platform recorded it
    (:data:`ADAPTER_BASE_RECORD`), that record alone decides, and the base must still have the
    recorded content; ``base_model_name_or_path`` in the adapter's own config (a relative path taken
    from the adapter's folder) is read only for a peft folder made elsewhere, on the user's own
    machine: the control service never admits an adapter without a record, so no path inside a
    tenant's file is followed."""
    record_path = Path(folder) / ADAPTER_BASE_RECORD
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    if record.get("base_model_path"):
        base = Path(record["base_model_path"])
        if not (base / "config.json").is_file() or model_digest(base) != record.get("base_model_digest"):
            raise FileNotFoundError(f"{folder}: the adapter's base model is gone or has changed since it was recorded")
        return base
    config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    named = config.get("base_model_name_or_path") or ""
    base = (Path(folder) / named).resolve() if named and not Path(named).is_absolute() else Path(named)
    if not named or not (base / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder}: the adapter's base model {named!r} (base_model_name_or_path in {ADAPTER_CONFIG}) is not a "
            "model folder here; set it to the base model's folder"
        )
    return base


def write_adapter_base(folder: str | Path, base: str | Path) -> None:
    """Record in an adapter folder the base model its weights go on, by folder and content digest:
    :func:`adapter_base` reads it instead of the adapter's config, and a generation engine serving
    that base can tell the adapters are its own, wherever it found them."""
    record = {"base_model_path": str(Path(base).resolve()), "base_model_digest": model_digest(base)}
    (Path(folder) / ADAPTER_BASE_RECORD).write_text(json.dumps(record), encoding="utf-8")


def recorded_adapter_base(folder: str | Path) -> str | None:
    """The base digest :func:`write_adapter_base` recorded, or None (no adapter, or not recorded)."""
    path = Path(folder) / ADAPTER_BASE_RECORD
    if not (is_adapter(folder) and path.is_file()):
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("base_model_digest")


def config_folder(folder: str | Path) -> Path:
    """Where a model folder's architecture is: the folder itself, or an adapter's base."""
    return adapter_base(folder) if is_adapter(folder) else Path(folder)


def is_encoder_decoder(model: str | Path | PreTrainedModel | PretrainedConfig) -> bool:
    """True for encoder-decoder models (T5), false for causal LMs; takes a folder, model or config."""
    if isinstance(model, str | Path):
        config = AutoConfig.from_pretrained(config_folder(model))
    else:
        config = model.config if isinstance(model, PreTrainedModel | torch.nn.Module) else model
    return bool(getattr(config, "is_encoder_decoder", False))


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM or an encoder-decoder model from a transformers folder, in ``dtype``. An adapter
    folder gives its base with the adapters merged in: a plain model of its own."""
    if is_adapter(folder):
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(adapter_base(folder), dtype), folder).merge_and_unload()
    config = AutoConfig.from_pretrained(folder)
    loader = AutoModelForSeq2SeqLM if is_encoder_decoder(config) else AutoModelForCausalLM
    return loader.from_pretrained(folder, dtype=dtype)


def convert_gguf(gguf: str | Path, out: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A transformers folder from a GGUF file (llama.cpp's format, in which many small instruct
    models ship): weights dequantized to ``dtype``, tokenizer and chat template kept. transformers
    reads GGUF (with the ``gguf`` package) but will not save what it read as GGUF-quantized, so the
    quantization record is dropped once the weights are plain tensors."""
    gguf, out = Path(gguf), Path(out)
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf}: no such file")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{gguf}: not a GGUF model transformers can read ({str(err).splitlines()[0]})") from None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as a module attribute
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def on_device(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """``model.to(device)``, typed: transformers wraps ``to`` with ``functools.wraps``, whose typing
    mypy cannot bind to an instance."""
    return model.to(device)  # type: ignore[arg-type]


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
    if is_adapter(folder):  # the same adapter on another base is another model
        h.update(bytes.fromhex(model_digest(adapter_base(folder))))
    return h.hexdigest()
