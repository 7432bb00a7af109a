"""A run's lifecycle (gpo_core.sweep.pipeline): the order of its stages and where each outcome
takes it, the one table the embedded runner and the services' workers both follow."""

import pytest

from gpo_core.sweep.pipeline import DONE, ENDS, STAGES, Step, next_step
from gpo_core.sweep.views import RunView


def test_a_run_goes_train_generate_judge_then_succeeds() -> None:
    assert STAGES == ("train", "generate", "judge")
    assert next_step("train", "done") == Step("generate", "queued")
    assert next_step("generate", "done") == Step("judge", "queued")
    assert next_step("judge", "done") == Step("done", "succeeded")


@pytest.mark.parametrize("stage", STAGES)
def test_diverging_ends_the_run_at_once_and_counts_as_over(stage) -> None:
    assert next_step(stage, "diverged") == Step("done", "diverged")
    assert "diverged" in DONE and "succeeded" in DONE and "failed" not in DONE


def test_every_end_is_a_state_the_api_can_show() -> None:
    for state in ENDS.values():
        RunView(id="r", loss="logistic", beta=0.1, state=state, stage="done", updated_at=0.0)


def test_an_online_run_goes_through_its_rounds_then_on_as_an_offline_run() -> None:
    """It starts at the trainer (the job folder's start; no pairs yet), then each round samples,
    labels and trains; after the last, the run is sampled on the evaluation prompts and judged, like
    an offline run after its training."""
    step, visited = Step("train", "queued"), []
    while step.stage != "done":
        visited.append((step.stage, step.round))
        step = next_step(step.stage, "done", step.round, 2)  # type: ignore[arg-type]
    assert visited == [("train", None), ("generate", 0), ("judge", 0), ("train", 0), ("generate", 1), ("judge", 1),
                       ("train", 1), ("generate", None), ("judge", None)]  # fmt: skip
    assert step == Step("done", "succeeded")


def test_a_round_that_diverges_ends_the_run() -> None:
    assert next_step("train", "diverged", 0, 3) == Step("done", "diverged")
