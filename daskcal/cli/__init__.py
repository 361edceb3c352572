"""Command-line interface (``daskcal --help``)."""

from daskcal.cli._main import console, main

__all__ = ["console", "main"]
