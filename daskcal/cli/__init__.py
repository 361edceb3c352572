"""Command-line interface (``daskcal --help``)."""

__all__ = ["console", "main"]


def console() -> None:
    """The ``daskcal`` command (console script, ``python -m daskcal``).

    Handed to this installation's running ``daskcal serve`` when there is one that takes it
    (:mod:`daskcal.cli._server`: standard library only, so that path imports nothing heavy),
    else run in this process (:func:`daskcal.cli._main.console`).
    """
    import os
    import sys

    argv = sys.argv[1:]
    if next((a for a in argv if not a.startswith("-")), None) != "serve":
        from daskcal.cli._server import run_on_server

        code = run_on_server(argv)
        if code is not None:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)
    from daskcal.cli._main import console as here

    here()


def __getattr__(name: str):
    if name == "main":
        from daskcal.cli._main import main

        return main
    msg = f"module 'daskcal.cli' has no attribute {name!r}"
    raise AttributeError(msg)
