"""The ``daskcal`` console command: one subcommand per module in ``SUBCOMMANDS``.

Each subcommand module defines ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from daskcal.cluster import DETECTOR_TASK_MODULES, IMAGE_TASK_MODULES

__all__ = ["build_parser", "console", "expected_failure", "main"]

# Subcommand modules by command name, in the order ``daskcal --help`` lists them.
COMMANDS = {
    "demo": "daskcal.cli._demo",
    "simulate": "daskcal.cli._simulate",
    "simulate-images": "daskcal.cli._simulate_images",
    "ingest": "daskcal.cli._ingest",
    "detector1": "daskcal.cli._detector1",
    "run": "daskcal.cli._run",
    "recipes": "daskcal.cli._recipes",
    "outliers": "daskcal.cli._outliers",
    "resample": "daskcal.cli._resample",
    "tweakreg": "daskcal.cli._tweakreg",
    "skymatch": "daskcal.cli._skymatch",
    "image3": "daskcal.cli._image3",
    "serve": "daskcal.cli._serve",
}
SUBCOMMANDS = tuple(COMMANDS.values())

#: Modules the tasks of each command import: its embedded cluster's workers start with them
#: (``daskcal.cluster.preload_workers``). ``run`` is missing: its recipe names the pipeline.
WORKER_MODULES = {
    "demo": DETECTOR_TASK_MODULES,
    "detector1": DETECTOR_TASK_MODULES,
    "outliers": IMAGE_TASK_MODULES,
    "resample": IMAGE_TASK_MODULES,
    "tweakreg": IMAGE_TASK_MODULES,
    "skymatch": IMAGE_TASK_MODULES,
    "image3": IMAGE_TASK_MODULES,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``daskcal`` parser; with ``command`` (a name of ``COMMANDS``), only that subcommand's.

    Each subcommand module imports what its options need (detector1's parameter classes import
    xarray, dask and numba): a command line naming its command builds only that one's parser.
    """
    parser = argparse.ArgumentParser(
        prog="daskcal",
        description="Space-telescope calibration (stcal algorithms) as Dask task graphs.",
    )
    from daskcal import __version__

    parser.add_argument("--version", action="version", version=f"daskcal {__version__}",
                        help="print daskcal's version and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [COMMANDS[command]] if command in COMMANDS else SUBCOMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option), if it is one of ``COMMANDS``."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def _preload_workers(command: str | None, argv: list[str]) -> None:
    """Start the process the embedded cluster forks its workers from, before this one imports what
    parsing the command's options needs: the two import at the same time (not for ``--help``, nor
    ``--cluster`` other than ``local``; the workers' dashboard only with ``--dashboard-address``).
    Should the command stop before starting its cluster, that process is stopped at exit."""
    if command not in WORKER_MODULES or "-h" in argv or "--help" in argv:
        return
    if (_option(argv, "--cluster") or "local").strip().lower() != "local":
        return
    from daskcal.cluster import preload_workers

    preload_workers(WORKER_MODULES[command], dashboard=_option(argv, "--dashboard-address") is not None)


def _option(argv: list[str], name: str) -> str | None:
    """The last value ``argv`` gives option ``name`` (``NAME VALUE`` or ``NAME=VALUE``), if any."""
    value = None
    for k, a in enumerate(argv):
        if a == name and k + 1 < len(argv):
            value = argv[k + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("--steps.") for a in argv):  # image3's step flags
        from daskcal.cli._image3 import normalise_step_flags

        argv = normalise_step_flags(argv)
    command = _command(argv)
    _preload_workers(command, argv)
    args = build_parser(command).parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    # dask.distributed sets its own loggers to INFO; filter at the handler so -v rules everything
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)
    logging.getLogger("daskcal").setLevel(level)
    _log_startup()
    previous = _terminate_like_interrupt()
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if not expected_failure(exc):
            raise  # a bug: the traceback is what to report
        text = _describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        print(f"daskcal {args.command}: error: {' '.join(text.split()) or type(exc).__name__}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"daskcal {args.command}: stopped by {exc}; products that were not complete were removed",
              file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"daskcal {args.command}: interrupted; products that were not complete were removed", file=sys.stderr)
        return 130
    finally:
        _restore(previous)


def console() -> None:
    """The ``daskcal`` command (console script, ``python -m daskcal``): :func:`main`, then a quick exit."""
    _exit(main())


def _exit(code: int) -> None:
    """Exit with ``code`` without tearing the interpreter down.

    Finalising every module a run imported (numpy, dask, distributed, numba, astropy...) took
    0.4-0.7 s after the command's last line. What a normal exit does that matters still happens
    first: other non-daemon threads are waited for, ``atexit`` handlers run (logging's flush,
    multiprocessing's, distributed's and daskcal's cleanups), stdout and stderr are flushed. The
    products are published (renamed into place) before :func:`main` returns.
    """
    import atexit
    import os
    import threading

    threading._shutdown()  # what the interpreter does first: stop thread pools, wait for non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (daskcal ... | head): nothing more can be said
            pass
    os._exit(code)


def _log_startup() -> None:
    """Log (``-v``) how long the process took to get here: interpreter, imports, parsing the arguments."""
    log = logging.getLogger("daskcal.cli")
    if not log.isEnabledFor(logging.INFO):
        return
    serve = sys.modules.get("daskcal.cli._serve")
    if serve is not None and serve._KEEPER is not None:
        log.info("timing: run by daskcal serve (no start-up of its own)")
        return
    import time

    import psutil  # a dependency of distributed

    log.info("timing: started in %.2f s (interpreter, imports, arguments)", time.time() - psutil.Process().create_time())


def _describe_os_error(exc: OSError) -> str:
    """One line naming the path and the reason (``[Errno 28] ...`` without the number)."""
    if exc.filename is None:
        return str(exc)
    where = repr(str(exc.filename)) + (f" -> {str(exc.filename2)!r}" if exc.filename2 else "")
    return f"{where}: {exc.strerror or exc}"


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process gets SIGTERM or SIGHUP (a batch system's walltime,
    ``scancel``, a closed terminal): the run unwinds as for Ctrl-C, cancelling its tasks and
    removing its unfinished products."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    _quiet_shutdown()
    raise Terminated(signum)


def _raise_interrupt(signum, frame):
    _quiet_shutdown()
    raise KeyboardInterrupt


def _quiet_shutdown() -> None:
    """Once the run is being stopped, dask's reports of the tasks it cancels are noise: hide them."""
    for name in ("distributed", "asyncio", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _terminate_like_interrupt() -> dict:
    """Handle SIGTERM and SIGHUP like SIGINT, all quietly (main thread only); return the handlers replaced."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, _raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with SIGINT ignored
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_interrupt)
    return previous


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def expected_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure the user can cause and fix, reported as one line (exit status 2).

    Those are what daskcal raises for bad input: ValueError, TypeError (a bad value or type);
    OSError (a missing or existing file, a file system that refuses: permissions, read-only,
    full, missing folders); an ImportError daskcal raised itself (a missing optional package:
    Python's own import errors carry the module's ``name``). Anything else is a bug and keeps
    its traceback.
    """
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return True
    from daskcal.cluster import MissingPackageError

    if isinstance(exc, MissingPackageError):
        return True
    if isinstance(exc, ImportError):
        return exc.name is None and exc.path is None and bool(str(exc))
    return False


if __name__ == "__main__":  # pragma: no cover
    console()
