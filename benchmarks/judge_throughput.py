"""Chat-judge throughput: comparisons per second against vLLM's OpenAI-compatible chat server on
loopback, with 1 and with N comparisons in flight, in one run; and the agreement figures of the
built-in task's judges (`gpo judge-eval`'s numbers).

    python benchmarks/judge_throughput.py [--comparisons 64] [--concurrency 16] [--verdict logprobs]

The served model is a small random Qwen2-shaped chat model (hidden 128, 2 layers, head_dim 32,
byte-level BPE, ChatML template; built here, nothing downloaded), served with
``python -m vllm.entrypoints.openai.api_server``. Server start is not timed. Each comparison is
judged in both orders, so a comparison is two requests; both measurements judge the same prompts
on a server without prefix caching (the same work; a random model's answers vary in length with
the prompt). Prints both rates, their ratio, and the machine's CPU time per comparison: when that
stays the same and the cores are busy, the server is CPU-bound and more requests in flight cannot
raise the rate beyond the cores left idle at concurrency 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the model builder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--verdict", default="logprobs", choices=["logprobs", "rationale", "json"])
    args = parser.parse_args()

    from gpo_core.data import load_preferences
    from gpo_core.judging.chat import ChatJudge
    from gpo_core.judging.comparison import side_by_side
    from gpo_core.judging.evaluation import evaluate_judge
    from gpo_core.judging.judges import LogprobJudge, OracleTaskJudge
    from gpo_core.judging.templates import DIALOGUE_TEMPLATE
    from gpo_core.task.build import BuiltTask, build_task, task_settings
    from tests.support.chat_model import build_chat_model
    from tests.support.ports import free_port
    from tests.unit.test_chat_judge import COMPACT_JSON
    from tests.unit.test_openai_judge import serve

    task = BuiltTask(build_task(None, task_settings("small", seed=3)).root)
    with tempfile.TemporaryDirectory() as folder:
        model = build_chat_model(task, Path(folder), pairs=40, hidden=128)["model"]

        def items(tag: str) -> list[dict]:
            return [
                {"prompt_id": str(i), "prompt": f"post {tag} number {i}", "a": "a short summary", "b": f"another {i}"}
                for i in range(args.comparisons)
            ]

        rates = {}
        # vLLM's CPU engine runs OpenMP threads that spin while they wait, by default keeping both
        # cores of this machine busy with an idle server: the client would compete with them.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # No prefix cache: both measurements judge the same prompts and must do the same work.
        server_args = (*COMPACT_JSON, "--no-enable-prefix-caching")
        with serve(model, free_port(), Path(folder) / "server.log", max_model_len=512, extra_args=server_args) as url:
            warm = ChatJudge(url, "judge", DIALOGUE_TEMPLATE, verdict=args.verdict)
            side_by_side(warm, items("warm-up")[:4], concurrency=4)  # the server's first requests are slow
            busy_before = cpu_seconds()
            time.sleep(3)
            print(f"server idle: CPU busy {(cpu_seconds() - busy_before) / 3:.2f} of {os.cpu_count()} cores")
            for concurrency in (1, args.concurrency):
                judge = ChatJudge(url, "judge", DIALOGUE_TEMPLATE, verdict=args.verdict)
                busy_before, started = cpu_seconds(), time.perf_counter()
                result = side_by_side(judge, items("measured"), retries=0, concurrency=concurrency)
                seconds, busy = time.perf_counter() - started, cpu_seconds() - busy_before
                rates[concurrency] = args.comparisons / seconds
                done = f"{args.comparisons} comparisons ({judge.usage.requests} requests) in {seconds:.1f} s"
                print(f"concurrency {concurrency:>2}: {done} = {rates[concurrency]:.2f} comparisons/s; "
                      f"CPU busy {busy / seconds:.2f} of {os.cpu_count()} cores, "
                      f"{busy / args.comparisons * 1000:.0f} CPU-ms per comparison; "
                      f"invalid {result.invalid}")  # fmt: skip
        if result.invalid:
            print("(invalid: a random model's answers are rarely verdicts; the requests are the same work)")
        print(f"ratio {args.concurrency} vs 1: {rates[args.concurrency] / rates[1]:.2f}x")
        latency_bound(args, items, ChatJudge, side_by_side, DIALOGUE_TEMPLATE)

        pairs = load_preferences(task.artifacts.eval_pairs)
        local = LogprobJudge(task.artifacts.model_dir, labels=(" POST:", " TL;DR:"))
        for name, judge in (("oracle (gold reward)", OracleTaskJudge(task)), ("local reference model", local)):
            figures = evaluate_judge(judge, pairs)
            a = figures["agreement"]
            print(f"{name}: agreement with labels {a['rate']:.3f} [{a['low']:.3f}, {a['high']:.3f}], "
                  f"with gold {figures['gold_agreement']:.3f}, position bias {figures['position_bias']:.3f}, "
                  f"{len(pairs)} pairs")  # fmt: skip
    print("command: python benchmarks/judge_throughput.py " + " ".join(sys.argv[1:]))


def cpu_seconds() -> float:
    """CPU time this machine has spent busy (all processes: client, API server, engine), from
    /proc/stat: what bounds the rate when the server is on the same cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def latency_bound(args, items, ChatJudge, side_by_side, template: str) -> None:
    """The same client against a server that answers after a fixed 200 ms, as a remote API does
    (the time is the network's and the provider's, not this machine's CPU)."""
    from tests.support.json_server import Script, chat_completion, json_server

    rates = {}
    with json_server(Script(lambda body, n: (200, {}, chat_completion("Verdict: A")), delay_s=0.2)) as url:
        for concurrency in (1, args.concurrency):
            judge = ChatJudge(url, "judge", template, verdict="rationale")
            batch = items(f"latency-{concurrency}")[:32]
            started = time.perf_counter()
            side_by_side(judge, batch, retries=0, concurrency=concurrency)
            rates[concurrency] = len(batch) / (time.perf_counter() - started)
            print(f"200 ms server, concurrency {concurrency:>2}: {rates[concurrency]:.2f} comparisons/s")
    print(f"ratio {args.concurrency} vs 1 against the 200 ms server: {rates[args.concurrency] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
