"""The one place a judge is made from its settings: the sweep's judging stages, their preflight and
``gpo judge``/``gpo judge-eval`` all call :func:`build_judge`, so a judge option means the same
everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpo_core.errors import InputError
from gpo_core.judging.comparison import Judge
from gpo_core.judging.settings import JudgeSettings
from gpo_core.judging.templates import template_text
from gpo_core.specfile import not_a_model_folder


def build_judge(
    settings: JudgeSettings,
    *,
    api_key: str | None = None,
    task_root: Path | None = None,
    model_dir: Path | None = None,
    conversational: Callable[[], bool] = lambda: False,
) -> Judge:
    """The judge ``settings`` describe. An endpoint judge sends ``api_key`` and nothing else: no
    key is read from the environment here (whose it is, is the caller's to decide). ``task_root``:
    the built-in task, for the oracle. ``model_dir``: where the local judge's folder is on this
    machine (default: ``settings.model_dir``). ``conversational`` is asked only when the default
    template depends on the prompts' kind (it may have to read them)."""
    if settings.kind == "oracle":
        from gpo_core.judging.judges import OracleTaskJudge
        from gpo_core.task.build import BuiltTask

        if task_root is None:
            raise InputError("the oracle judge needs the built-in task (task: in a job spec, --task here)")
        try:
            task = BuiltTask(task_root)
        except FileNotFoundError as err:  # a folder that is not a built task
            raise InputError(str(err)) from None
        return OracleTaskJudge(task, settings.mode, reward=settings.reward)
    template = template_text(settings.template, settings.template is None and conversational())
    labels = (settings.labels[0], settings.labels[1])
    if settings.kind == "local":
        from gpo_core.judging.judges import LogprobJudge

        assert settings.model_dir is not None  # JudgeSettings requires it for a local judge
        folder = model_dir or Path(settings.model_dir)
        if not (folder / "config.json").is_file():
            raise InputError(f"judge model_dir: {not_a_model_folder(settings.model_dir)}")
        return LogprobJudge(folder, template, labels)
    # JudgeSettings requires both for endpoint judges, and checks each kind's verdicts.
    assert settings.base_url is not None and settings.model is not None
    verdict = settings.verdict
    if settings.kind == "chat":
        from gpo_core.judging.chat import ChatJudge

        assert verdict != "choice"
        return ChatJudge(
            settings.base_url,
            settings.model,
            template,
            labels,
            verdict,
            api_key=api_key,
            prices=settings.price_per_million,
        )
    from gpo_core.judging.judges import OpenAIJudge

    assert verdict in ("logprobs", "choice")
    return OpenAIJudge(settings.base_url, settings.model, template, labels, api_key=api_key or "EMPTY", verdict=verdict)
