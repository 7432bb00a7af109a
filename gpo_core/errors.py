"""The platform's error kinds, defined once. Every error raised on purpose derives from
:class:`GPOError`, and its message is written for the user (what was wrong and where: field, line,
file, URL). Callers catch one class: the CLI prints any ``GPOError``; a worker fails a run at once
on a :class:`PermanentError` and gives any other failure another attempt.

The concrete kinds live beside the code that raises them (``DatasetError`` in ``data.py``,
``SpecError`` in ``train/spec.py`` ...) and derive from one of the two classes here. Input errors
also derive from ``ValueError``, so code written against the standard kinds keeps working."""

from __future__ import annotations


class GPOError(Exception):
    """An error the platform raises on purpose; ``str(err)`` is the whole message for the user."""


class PermanentError(GPOError):
    """Another attempt cannot fix it: bad data, a bad spec or formula, a model that cannot train,
    an endpoint that refuses the request. A task failing with one fails its run at once."""


class InputError(PermanentError, ValueError):
    """Something the user gave (a spec, a dataset, a formula, a model folder) cannot be used."""
