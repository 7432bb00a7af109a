"""The ``gpo`` command line (entry point ``gpo_client.cli:main``): one module per group of
commands, all registered in :mod:`gpo_client.cli.main`."""

from gpo_client.cli.main import app, main

__all__ = ["app", "main"]
