"""Compiling a run's numba kernels once, in the driver, before its first compute.

numba compiles a kernel the first time it is called with new argument types and, as
daskcal's kernels say ``cache=True``, stores the machine code for every later process:
in ``NUMBA_CACHE_DIR`` if set, else in the ``__pycache__`` beside the kernel's source,
else (a read-only install) in a user cache directory (``~/.cache/numba``). A first run
in a fresh environment therefore compiles, and without help every worker process of a
cluster compiles the same kernels at the same time.

:func:`precompile` runs a step's warm-up (a call of its kernels on a few pixels with
the run's dtypes) in a background thread of the driver while the cluster starts, and
prints one line to stderr when numba begins to compile (nothing when every kernel comes
from the cache). The caller waits for it before the first compute; the workers then
load the kernels from the cache instead of compiling them again.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["Precompile", "import_before_threads", "precompile"]

log = logging.getLogger(__name__)


class Precompile:
    """A warm-up running in a background thread; :meth:`wait` before the first compute.

    Attributes
    ----------
    compiled : bool
        Whether numba compiled anything during the warm-up (set once it is done).
    seconds : float
        Wall time of the warm-up (set once it is done).
    """

    def __init__(self, warm_up: Callable[[], object], *, estimate: float, stream=None):
        self._warm_up = warm_up
        self._estimate = estimate
        self._stream = stream
        self._error: BaseException | None = None
        self.compiled = False
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="daskcal-precompile", daemon=True)

    def _announce(self) -> None:
        if not self.compiled:
            self.compiled = True
            stream = self._stream if self._stream is not None else sys.stderr
            print(f"compiling numba kernels (first run in this environment, ~{self._estimate:.0f} s)...",
                  file=stream, flush=True)

    def _run(self) -> None:
        from numba.core import event

        announce = self._announce

        class _Listener(event.Listener):
            def on_start(self, ev):
                announce()

            def on_end(self, ev):
                pass

        t0 = time.perf_counter()
        try:
            with event.install_listener("numba:compile", _Listener()):
                self._warm_up()
        except BaseException as exc:  # noqa: BLE001 - reported by wait(), in the caller's thread
            self._error = exc
        self.seconds = time.perf_counter() - t0

    def start(self) -> Precompile:
        import_before_threads()
        self._thread.start()
        return self

    def wait(self) -> None:
        """Block until the warm-up is done.

        A warm-up that failed is logged as a warning (the workers then compile what they
        need, as without a warm-up); an interrupt (KeyboardInterrupt, SystemExit) is re-raised.
        """
        self._thread.join()
        if isinstance(self._error, Exception):
            log.warning("could not compile the numba kernels ahead of the run (%s: %s); the workers compile "
                        "them as they need them", type(self._error).__name__, self._error)
        elif self._error is not None:
            raise self._error


def import_before_threads() -> None:
    """Import ``distributed`` in the calling thread, before it starts a thread that may import it too.

    A warm-up's ``dask.compute`` imports ``distributed`` (``dask.base.get_scheduler`` looks for a
    client) and the cluster start imports it (dask-jobqueue, ``LocalCluster``). When two threads
    import a package's modules for the first time at once, each can hold a module the other waits
    for; CPython breaks that deadlock by handing one of them a partially initialised module, and
    its ``from distributed.core import Server`` fails with "cannot import name ... from partially
    initialized module". CI's ``sbatch deploy/slurm-image3.sh`` failed so (seen once). A script
    that imports dask_jobqueue 0 to 0.4 s after image3's warm-up starts failed in 10 of 24 runs on
    this machine, and in none of 24 once ``distributed`` was imported first: every later import of
    it, in either thread, is a lookup. ``distributed`` is a dependency of
    daskcal (``dask[distributed]``).
    """
    import distributed  # noqa: F401


def precompile(warm_up: Callable[[], object], *, estimate: float, stream=None) -> Precompile:
    """Start ``warm_up()`` in a background thread that announces numba compiling.

    Parameters
    ----------
    warm_up : callable
        Calls the kernels a run needs, with the argument types the run gives them
        (tiny arrays: the point is compiling, or loading from numba's cache).
    estimate : float
        Seconds compiling usually takes (printed in the announcement).
    stream : file, optional
        Where the announcement goes; default ``sys.stderr``.

    Returns
    -------
    Precompile
        Call its ``wait()`` before computing (a failed warm-up is a logged warning there).
    """
    return Precompile(warm_up, estimate=estimate, stream=stream).start()
