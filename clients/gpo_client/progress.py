"""Live progress in the terminal, one display for every command that waits on training: one bar
per run (training steps), its stage and state, the win rate once judged, and a line for each
message. It is fed by whichever stream the command has: a run's training records (``gpo
train``), a sweep's events (``gpo run``) or a job's server-sent events (``gpo watch``, the SDK)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

# What an online round's stage does (gpo_core.sweep.pipeline.ROUND_STAGES), as its progress line says it.
ROUND_WORK = {"generate": "sampling", "judge": "labelling", "train": "training"}


def data_summary(record: dict) -> str:
    """What tokenizing did to a run's data, in one line (a training ``data`` record)."""
    parts = [f"{record['pairs']} pairs"]
    if record.get("prompts_cut"):
        parts.append(f"{record['prompts_cut']} prompts cut to max_prompt_length")
    if record.get("responses_cut"):
        parts.append(f"{record['responses_cut']} responses cut to max_response_length")
    if record.get("identical_dropped"):
        parts.append(f"{record['identical_dropped']} pairs dropped: chosen and rejected were the same tokens")
    return "; ".join(parts)


class RunProgress:
    def __init__(self, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self.bars: dict[str, TaskID] = {}
        self.traces: dict[str, str] = {}  # each run's latest KL trace, shown on its bar

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def add(self, run: str, total: int | None, completed: int = 0, info: str = "queued") -> None:
        self.bars[run] = self.progress.add_task(run, total=total, completed=completed, info=info)

    def message(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)

    def training(self, run: str, record: dict) -> None:
        """A training record of ``run``: a step moves its bar and a trace shows on it (a sweep traces
        every run many times: as lines, they pushed the bars off the screen); a resume is a line."""
        kind = record.get("kind")
        if kind == "step" and run in self.bars:
            info = f"train: loss {record.get('loss', 0):.4f} acc {record.get('accuracy', 0):.2f}"
            if "pairs_per_s" in record:
                info += f" {record['pairs_per_s']:.1f} pairs/s"
            if run in self.traces:
                info += f" | {self.traces[run]}"
            self.progress.update(self.bars[run], completed=record["step"], total=record.get("steps"), info=info)
        elif kind == "trace":
            parts = [f"{k} {record[k]:.3g}" for k in ("kl", "square_loss") if k in record]
            self.traces[run] = f"step {record['step']}: " + ", ".join(parts)
            if run not in self.bars:
                self.message(f"{run} trace at {self.traces[run]}")
        elif kind == "data" and (record.get("identical_dropped") or record.get("responses_cut")):
            self.message(f"{run} data: {data_summary(record)}")
        elif kind == "resumed":
            self.message(f"{run} resumed from step {record['step']} ({record['checkpoint']})")
        elif kind == "finished_before":
            if run in self.bars:
                step = record["step"]
                self.progress.update(self.bars[run], completed=step, total=step, info="trained before")
            self.message(f"{run} was trained to step {record['step']} before, by this spec: not trained again")

    def stage(
        self,
        run: str,
        stage: str,
        state: str,
        win_rate: dict | None = None,
        reason: str | None = None,
        round: int | str | None = None,
    ) -> None:
        """A run's stage changed state (of an online ``round``, when it is one's)."""
        if round not in (None, ""):
            stage = f"round {round} {ROUND_WORK.get(stage, stage)}"
        if state == "diverged":
            self.message(f"{run} diverged ({reason or 'non-finite loss'}): the sweep goes on without it")
        if run not in self.bars:
            if state != "diverged":
                self.message(f"{run} {stage}: {state}")
            return
        info = f"win rate {win_rate['rate']:.3f}" if win_rate else f"{stage}: {state}"
        if state == "diverged":
            info = "diverged"
        self.progress.update(self.bars[run], info=info)

    def sweep_event(self, event: dict) -> None:
        """An event of the embedded runner (``gpo_core.sweep.runner.run_job``)."""
        if event["kind"] == "log":
            self.message(event["message"])
        elif event["kind"] == "stage":
            win_rate = event.get("win_rate") if event["stage"] == "judge" and event["state"] == "done" else None
            self.stage(event["run"], event["stage"], event["state"], win_rate, event.get("reason"), event.get("round"))
        elif "run" in event:
            self.training(event["run"], event)

    def server_event(self, event) -> None:
        """A job's server-sent event (``gpo_client.sdk.Event``)."""
        data = event.data
        if event.type == "metrics":
            self.training(data.get("run", ""), data)
        elif event.type == "run_state":
            self.stage(
                data.get("run", ""), data["stage"], data["state"], reason=data.get("reason"), round=data.get("round")
            )
        elif event.type == "job_state":
            reason = f" ({data['reason']})" if data.get("reason") else ""
            self.message(f"job {data['state']}{reason}")
        elif event.type == "log":
            self.message(data.get("message", ""))
