"""Live progress of a job in the terminal, driven by its server-sent events: one bar per run
(training steps), its stage and state, and the win rate once judged."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gpo_core.sweep.views import JobView


class JobProgress:
    def __init__(self, job: JobView, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self.bars = {
            run.id: self.progress.add_task(
                run.id, total=run.steps, completed=run.step, info=f"{run.stage}: {run.state}"
            )
            for run in job.runs
        }
        self.progress.start()

    def update(self, event) -> None:
        data, run = event.data, event.data.get("run")
        if event.type == "metrics" and run in self.bars and data.get("kind") == "step":
            info = f"train: loss {data.get('loss', 0):.4f} acc {data.get('accuracy', 0):.2f}"
            self.progress.update(self.bars[run], completed=data["step"], total=data.get("steps"), info=info)
        elif event.type == "run_state" and run in self.bars:
            self.progress.update(self.bars[run], info=f"{data['stage']}: {data['state']}")
        elif event.type == "job_state":
            reason = f" ({data['reason']})" if data.get("reason") else ""
            self.progress.console.print(f"job {data['state']}{reason}")
        elif event.type == "log":
            self.progress.console.print(data.get("message", ""))

    def close(self) -> None:
        self.progress.stop()
