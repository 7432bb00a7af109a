"""What the preflight finds before any training, on the built-in task's model and tokenizer."""

import json

import pytest

from gpo_core.sweep.preflight import PreflightError, check_data
from gpo_core.sweep.spec import JobSpec
from gpo_core.sweep.stages import Inputs


def test_data_the_tokenizer_cannot_read_is_refused_before_training(small_task, tmp_path) -> None:
    """Issue 29: every token of a user's English data was <unk> for the model's tokenizer; the
    job trained, judged and 'succeeded', and only "7 pairs dropped" hinted at it."""
    artifacts = small_task.artifacts
    english = tmp_path / "english.jsonl"
    record = {"prompt": "Summarize the meeting notes, please.", "chosen": "Budget approved; hiring frozen.",
              "rejected": "Nothing happened at all."}  # fmt: skip
    english.write_text("".join(json.dumps({**record, "prompt": f"{record['prompt']} ({i})"}) + "\n" for i in range(8)))
    spec = JobSpec(task={"size": "small"}, losses=["logistic"], betas=[0.1])

    def inputs(dataset: str) -> Inputs:
        return Inputs(policy=artifacts.model_dir, reference=artifacts.model_dir, dataset=dataset, eval_pairs=None,
                      eval_prompts=artifacts.eval_prompts, task_root=None)  # fmt: skip

    with pytest.raises(PreflightError, match=r"dataset: .*english.jsonl: \d+% of the tokens of its first 8 records"):
        check_data(spec, inputs(str(english)))
    pairs, prompts = check_data(spec, inputs(artifacts.train_pairs))  # the task's own data reads fine
    assert pairs and prompts
