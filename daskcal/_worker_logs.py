"""Importing this module quiets a worker's shutdown noise in this process's ``distributed.worker`` log.

A worker sends the scheduler a heartbeat every second. When the cluster closes, the worker closes
its connection pool while a heartbeat may still be waiting for its answer; distributed then logs
"Failed to communicate with scheduler during heartbeat." at ERROR with the traceback of
``CommClosedError: ConnectionPool closing.`` on the worker's stderr (which an embedded cluster's
worker shares with the command). Nothing failed: the worker is closing its own connections. CI
saw it once after a README example that ended without error (``tests/test_snippets.py``).

The filter turns exactly that record (the heartbeat message with that error) into a debug message
of this module; a heartbeat that fails for any other reason is logged as before. The embedded
cluster's workers import this module (:data:`daskcal.cluster.WORKER_MODULES`), as do workers that
preload :mod:`daskcal.preload`.
"""

from __future__ import annotations

import logging

__all__ = ["ClosingHeartbeatFilter"]

log = logging.getLogger(__name__)


class ClosingHeartbeatFilter(logging.Filter):
    """Drops distributed's "Failed to communicate with scheduler during heartbeat." when its error is the
    worker's own connection pool closing (logged at debug level here instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if (error is not None and record.getMessage().startswith("Failed to communicate with scheduler during heartbeat")
                and type(error).__name__ == "CommClosedError" and "ConnectionPool closing" in str(error)):
            log.debug("worker shutdown: a heartbeat was in flight when the connection pool closed")
            return False
        return True


def _install() -> None:
    logger = logging.getLogger("distributed.worker")
    if not any(isinstance(f, ClosingHeartbeatFilter) for f in logger.filters):
        logger.addFilter(ClosingHeartbeatFilter())


_install()
