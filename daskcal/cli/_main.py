"""The ``daskcal`` console command: one subcommand per module in ``SUBCOMMANDS``.

Each subcommand module defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "build_parser"]

# Subcommand modules, in the order ``daskcal --help`` lists them.
SUBCOMMANDS = (
    "daskcal.cli._demo",
    "daskcal.cli._simulate",
    "daskcal.cli._ingest",
    "daskcal.cli._detector1",
    "daskcal.cli._run",
    "daskcal.cli._outliers",
    "daskcal.cli._resample",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daskcal",
        description="Space-telescope calibration (stcal algorithms) as Dask task graphs.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    # dask.distributed sets its own loggers to INFO; filter at the handler so -v rules everything
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    logging.getLogger("daskcal").setLevel(level)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError, ConnectionError, ModuleNotFoundError) as exc:
        print(f"daskcal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
