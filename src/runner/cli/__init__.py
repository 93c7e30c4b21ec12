"""Command line: `runner serve`, `runner models ...`, `runner status | ps | run`, `bench`,
`cluster`. `main` is the console entry point (and `python -m runner`); see `cli.main`."""

from runner.cli.common import UsageError, settings_from
from runner.cli.main import build_parser, main

__all__ = ["UsageError", "build_parser", "main", "settings_from"]
