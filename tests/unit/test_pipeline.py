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
