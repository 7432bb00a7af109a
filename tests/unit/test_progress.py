"""The terminal display every waiting command shares (``gpo_client.progress``)."""

import io

from rich.console import Console

from gpo_client.progress import RunProgress


def test_a_sweeps_traces_show_on_the_bars_not_as_lines_above_them() -> None:
    """Issue 29: 90 'trace at step N' lines pushed the demo's progress bars off the screen."""
    out = io.StringIO()
    display = RunProgress(Console(file=out, width=200, force_terminal=False))
    display.add("r00", 20)
    for step in (0, 10, 20):
        display.training("r00", {"kind": "trace", "step": step, "kl": 0.1 * step, "square_loss": step})
    display.training("r00", {"kind": "step", "step": 20, "steps": 20, "loss": 0.5, "accuracy": 0.75})
    task = display.progress.tasks[0]
    assert task.completed == 20 and task.fields["info"].endswith("| step 20: kl 2, square_loss 20")
    assert "trace at" not in out.getvalue()
    display.training("other", {"kind": "trace", "step": 5, "kl": 0.5})  # a run without a bar: a line
    assert "other trace at step 5: kl 0.5" in out.getvalue()
