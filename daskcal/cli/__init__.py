"""Command-line interface (``daskcal --help``)."""

from daskcal.cli._main import main

__all__ = ["main"]
