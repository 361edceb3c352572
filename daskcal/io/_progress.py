"""The console progress of a computation on a ``distributed`` client: a bar on a terminal, a few lines in a log.

Dask's text bar redraws itself in place every 0.1 s (``\\r``), which on a terminal is one line
but in a file (a batch job's log, ``daskcal ... | tee log``) is ten updates a second: 2 MB an
hour. When stdout is not a terminal, :class:`LineProgress` prints a whole line each time
another 10% of the tasks is done, or a minute has passed since the last line, and one at the end.
"""

from __future__ import annotations

import contextlib
import sys
import time

from dask.utils import format_time
from distributed.client import futures_of
from distributed.diagnostics.progressbar import TextProgressBar

__all__ = ["LineProgress", "show_progress"]

#: A line at every this many percent of the tasks done ...
STEP_PERCENT = 10
#: ... or when this many seconds have passed since the last line.
EVERY_SECONDS = 60.0


def show_progress(futures) -> None:
    """Block until ``futures`` are done, showing their progress on stdout (a bar, or lines if not a terminal)."""
    if _is_terminal(sys.stdout):
        from distributed import progress

        progress(futures)
        print()
    else:
        LineProgress(futures)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class LineProgress(TextProgressBar):
    """Track ``keys`` (futures) until done, writing a progress line to stdout each time another
    :data:`STEP_PERCENT` percent of the tasks is done or :data:`EVERY_SECONDS` s have passed, and at the end."""

    def __init__(self, keys, **kwargs) -> None:
        self._last_step = -1
        self._last_time = time.monotonic()
        super().__init__(futures_of(keys), interval="1s", **kwargs)

    def _draw_bar(self, remaining, all, **kwargs) -> None:
        frac = (1 - remaining / all) if all else 1.0
        percent = int(100 * frac)
        step = percent // STEP_PERCENT
        now = time.monotonic()
        if step == self._last_step and now - self._last_time < EVERY_SECONDS:
            return
        self._last_step, self._last_time = step, now
        bar = "#" * int(self.width * frac)
        with contextlib.suppress(ValueError):  # stdout closed
            sys.stdout.write(f"[{bar:<{self.width}}] | {percent}% Completed | {format_time(self.elapsed)}\n")
            sys.stdout.flush()

    def _draw_stop(self, **kwargs) -> None:
        pass  # no terminal control sequence in a log
