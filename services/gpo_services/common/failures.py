"""Errors that another attempt of a task cannot fix: bad data, a bad spec, a run that cannot train,
a judge endpoint that refuses the request. A task that fails with one fails its run at once (in a
task's child, where it is raised, and in the worker, which reads the child's answer). A run whose
loss diverges is not an error: it is recorded as diverged and its job goes on."""

from __future__ import annotations

from gpo_core.data import DatasetError
from gpo_core.generate import GenerationError
from gpo_core.identity import DifferentSpec
from gpo_core.judge import JudgeEndpointRefused
from gpo_core.sweep.preflight import PreflightError
from gpo_core.sweep.spec import JobSpecError
from gpo_core.train.loop import TrainingError
from gpo_core.train.spec import SpecError

PERMANENT_ERRORS = (
    DatasetError,
    DifferentSpec,
    GenerationError,
    JobSpecError,
    JudgeEndpointRefused,
    PreflightError,
    SpecError,
    TrainingError,
)
