"""``daskcal serve``: keep daskcal imported and its embedded cluster running; later commands of this user run here.

Most of a small command's time is not its computation: starting Python and importing numpy,
dask, distributed, xarray, numba, gwcs and asdf, then starting the embedded cluster (its
fork server and worker processes), loading numba's kernels, and a fresh worker's first touch
of its memory. ``daskcal serve`` pays that once. While it runs, a ``daskcal`` command of the
same installation (see :mod:`daskcal.cli._server`) is run here, one at a time, in the
command's working directory and with its output sent back; the embedded cluster a command
asks for (``--cluster local`` or ``threads`` with its options) is kept for the next command
that asks for the same one, and replaced when one asks for another. A command that fails or
is stopped has its cluster closed (its tasks may still be running) and the next one starts
a fresh one. A command that arrives while another runs here runs in its own process.

What the commands share here and would not share as separate processes: the Dask
configuration read when the server started (environment variables that could change it must
be equal, or the command runs in its own process), Python's record of warnings already
shown once, and the workers' logs, which go to the server's terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time

from daskcal.cli import _server

__all__ = ["borrowed_cluster", "register"]

log = logging.getLogger(__name__)

#: The cluster keeper of the server running in this process (None elsewhere).
_KEEPER = None


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="keep daskcal warm in this process: this user's later daskcal commands run here, seconds sooner",
        description="Import daskcal and start its embedded cluster once, then run this user's daskcal commands of "
        "the same installation here (one at a time; a command arriving meanwhile runs in its own process). "
        "Stop with Ctrl-C or 'daskcal serve --stop'. DASKCAL_SERVER=0 makes a command run in its own process.",
    )
    p.add_argument("--stop", action="store_true", help="stop the running server (after its current command) and exit")
    p.add_argument("--no-cluster", action="store_true",
                   help="do not start the default embedded cluster now (the first command that needs one starts it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not _server._supported():
        msg = "daskcal serve needs Unix sockets (Linux, macOS)"
        raise OSError(msg)
    path = _server.socket_path()
    if args.stop:
        return _stop(path)
    for stale in _server.stale_sockets(path):  # a server of this installation running files edited since
        if _ask_to_stop(stale):
            print(f"daskcal serve: stopping the server at {stale}: it runs other versions of daskcal's files", flush=True)
    server = Server(path)
    try:
        with server:
            print(f"daskcal serve: listening at {path} (Ctrl-C or 'daskcal serve --stop' to stop)", flush=True)
            server.warm(cluster=not args.no_cluster)
            print("daskcal serve: ready", flush=True)
            server.loop()
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP for the server: a normal way to stop it
        pass
    print("daskcal serve: stopped", flush=True)
    return 0


def _stop(path) -> int:
    """Stop the servers of this installation (this version of its files, and older ones)."""
    stopped = [p for p in [path, *_server.stale_sockets(path)] if _ask_to_stop(p)]
    if not stopped:
        print(f"daskcal serve: no server runs at {path}", file=sys.stderr)
        return 1
    for p in stopped:
        print(f"daskcal serve: the server at {p} stops after its current command", flush=True)
    return 0


def _ask_to_stop(path) -> bool:
    """Ask the server at ``path`` to stop; whether one was there to ask."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
            _server.send(sock, {"stop": True})
            return _server.receive(sock) is not None
        except OSError:
            return False


def borrowed_cluster(cluster: str, **kwargs):
    """In a server, the kept embedded cluster for ``daskcal.connect(cluster, **kwargs)`` as a context manager whose
    exit leaves it running; None outside a server, or for a cluster it does not keep (an address, slurm, pbs)."""
    if _KEEPER is None or str(cluster).strip().lower() not in ("local", "threads"):
        return None
    return _KEEPER.borrow(str(cluster).strip().lower(), kwargs)


class _Borrowed:
    """A kept client lent to one command: entering gives the client, leaving and :meth:`close` leave it open."""

    def __init__(self, client) -> None:
        self._client = client

    def __enter__(self):
        return self._client

    def __exit__(self, *exc) -> None:
        return None

    def close(self) -> None:
        return None

    def __getattr__(self, name):
        return getattr(self._client, name)


class _Keeper:
    """The one embedded cluster a server keeps between commands, with the ``connect`` arguments it was made with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key = None
        self._client = None
        self._workers = 0
        self.cwd = os.getcwd()

    def borrow(self, cluster: str, kwargs: dict) -> _Borrowed:
        from daskcal.cluster import connect

        key = (cluster, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        with self._lock:
            if self._client is not None and (self._key != key or not self._healthy()):
                self._discard()
            if self._client is None:
                t0 = time.perf_counter()
                self._client = connect(cluster, **kwargs)
                self._key = key
                self._workers = len(self._client.nthreads())
                log.info("serve: started a %s cluster of %d workers in %.2f s", cluster, self._workers,
                         time.perf_counter() - t0)
            client = self._client
        if cluster == "local":  # the worker processes resolve relative paths as the command does
            client.run(os.chdir, self.cwd)
        return _Borrowed(client)

    def _healthy(self) -> bool:
        try:
            return self._client.status == "running" and len(self._client.nthreads()) == self._workers
        except Exception:  # noqa: BLE001 - a scheduler that went away: start another
            return False

    def discard(self) -> None:
        """Close the kept cluster (the next command that needs one starts a new one)."""
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        client, self._client, self._key = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


class _Stream:
    """A text stream that sends what is written to the client (``out`` or ``err``), as its terminal would show it."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, conn: socket.socket, key: str, tty: bool, lock: threading.Lock) -> None:
        self._conn, self._key, self._tty, self._lock = conn, key, tty, lock
        self.closed = False

    def write(self, text: str) -> int:
        if text:
            with self._lock, contextlib.suppress(OSError):
                _server.send(self._conn, {self._key: text})
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return self._tty

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        import io

        raise io.UnsupportedOperation("the daskcal server's stream to its client has no file descriptor")


class Server:
    """The listening socket, the thread that takes connections, and the loop that runs their commands."""

    def __init__(self, path) -> None:
        self.path = path
        self._queue: queue.Queue = queue.Queue()
        self._busy = threading.Event()
        self._stopping = threading.Event()
        self._sock = None
        self._env = _server.relevant_environ()
        self._forwarded: list = []
        self.keeper = _Keeper()

    def __enter__(self) -> Server:
        global _KEEPER
        self._listen()
        _KEEPER = self.keeper
        threading.Thread(target=self._accept, name="daskcal-serve-accept", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        global _KEEPER
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # the socket this server made
        _KEEPER = None
        self.keeper.discard()

    def _listen(self) -> None:
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _server._private(folder):
            msg = f"{folder} must belong to you and be closed to others (mode 700) to hold the server's socket"
            raise PermissionError(msg)
        if len(os.fsencode(self.path)) > 100:
            msg = f"the socket path {str(self.path)!r} is too long for a Unix socket; set XDG_RUNTIME_DIR to a short folder"
            raise ValueError(msg)
        if self.path.exists():
            if _server._listening(self.path):
                msg = f"a daskcal server already runs at {self.path}"
                raise FileExistsError(msg)
            os.unlink(self.path)  # left by a server of this installation that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(8)
        self._sock = sock

    def warm(self, *, cluster: bool) -> None:
        """Import every command's modules, asdf's extensions, and start the commands' default embedded cluster."""
        import importlib

        import distributed  # noqa: F401 - its configuration's defaults, before any command's state is saved

        from daskcal.cli._main import build_parser
        from daskcal.cluster import (
            DETECTOR_TASK_MODULES,
            IMAGE_TASK_MODULES,
            preload_workers,
        )

        t0 = time.perf_counter()
        if cluster:
            preload_workers((*DETECTOR_TASK_MODULES, *IMAGE_TASK_MODULES), dashboard=False)
        build_parser()
        for name in (*DETECTOR_TASK_MODULES, *IMAGE_TASK_MODULES):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        from daskcal.image._asdf import load_extensions

        load_extensions()
        if cluster:
            args = build_parser("detector1").parse_args(["detector1", "in", "out"])
            from daskcal.cli._common import connect_options

            self.keeper.borrow("local", {"n_workers": args.workers, "threads_per_worker": args.threads,
                                         **connect_options(args)})
        log.info("serve: warm in %.2f s", time.perf_counter() - t0)

    # --- taking connections (a thread) ---------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            try:
                self._take(conn)
            except Exception:  # one bad client does not stop the server
                log.debug("serve: a connection failed", exc_info=True)
                conn.close()

    def _take(self, conn: socket.socket) -> None:
        if _server._peer_uid(conn) != os.getuid():  # the folder's mode keeps others out already
            conn.close()
            return
        conn.settimeout(10.0)
        message = _server.receive(conn)
        conn.settimeout(None)
        if message is None:
            conn.close()
        elif message.get("stop"):
            _server.send(conn, {"stopping": True})
            conn.close()
            self._stopping.set()
            self._queue.put(None)
        elif self._busy.is_set() or self._stopping.is_set():
            _server.send(conn, {"busy": True})
            conn.close()
        elif (differ := _differences(self._env, message.get("env", {}))):
            _server.send(conn, {"refused": f"its environment differs in {differ}"})
            conn.close()
        else:
            self._busy.set()
            _server.send(conn, {"accepted": True})
            self._queue.put((conn, message))

    # --- running commands (the main thread) ----------------------------------------------------

    def loop(self) -> None:
        """Run the commands the accepting thread queues until stopped (Ctrl-C, SIGTERM or ``--stop``)."""
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                break
            conn, message = item
            self._forwarded = []
            try:
                if self._run(conn, message):
                    break
            except KeyboardInterrupt:
                if not self._forwarded:
                    raise  # Ctrl-C or SIGTERM for the server itself
                # the client's signal, handled as the command ended
            finally:
                conn.close()
                self._busy.clear()

    def _run(self, conn: socket.socket, message: dict) -> bool:
        """Run one command for the client on ``conn``; whether the server itself was told to stop meanwhile."""
        from daskcal.cli._main import main

        argv = message["argv"]
        forwarded = self._forwarded
        done = threading.Event()
        lock = threading.Lock()
        watcher = threading.Thread(target=self._watch, args=(conn, forwarded, done), daemon=True,
                                   name="daskcal-serve-client")
        t0 = time.perf_counter()
        code, own_signal = 1, False
        with _command_state(message, conn, lock, self.keeper), _interruptible():
            watcher.start()
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help, --version, a usage error
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
            except Exception:  # noqa: BLE001 - a bug in the command: its traceback goes to the client
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                done.set()
            own_signal = code in (129, 130, 143) and not forwarded
        with contextlib.suppress(OSError):
            _server.send(conn, {"exit": code})
        print(f"daskcal serve: {' '.join(argv)} (in {message['cwd']}): exit {code} after "
              f"{time.perf_counter() - t0:.2f} s", flush=True)
        if code != 0:
            self.keeper.discard()  # its tasks may still run on the workers
        return own_signal

    def _watch(self, conn: socket.socket, forwarded: list, done: threading.Event) -> None:
        """Pass the client's signals to the command (the main thread), and SIGTERM if the client goes away."""
        main_id = threading.main_thread().ident
        while not done.is_set():
            try:
                message = _server.receive(conn)
            except OSError:
                message = None
            if done.is_set():
                return
            name = "SIGTERM" if message is None else message.get("signal")
            signum = getattr(signal, name, None) if name in _server.SIGNALS else None
            if signum is not None:
                forwarded.append(name)
                signal.pthread_kill(main_id, signum)
            if message is None:
                return




def _differences(mine: dict, theirs: dict) -> str:
    """The names of the variables two :func:`daskcal.cli._server.relevant_environ` differ in, '' if none."""
    names = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if not names:
        return ""
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


@contextlib.contextmanager
def _interruptible():
    """SIGINT raising KeyboardInterrupt for the block, also in a server started with it ignored (``daskcal serve &``
    in a script): the client passes its Ctrl-C on only when its own is not ignored, and the command must obey it."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _command_state(message: dict, conn: socket.socket, lock: threading.Lock, keeper: _Keeper):
    """The process as the client's command expects it, then as it was: working directory, ``sys.argv``,
    the streams (to the client), the terminal's width, the root logger's handlers, daskcal's and
    distributed's log levels, the Dask configuration, warning filters and the environment."""
    import dask

    saved_cwd = os.getcwd()
    saved_argv = sys.argv
    saved_streams = sys.stdout, sys.stderr
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    names = ("daskcal", "distributed", "asyncio", "tornado", "distributed.nanny")
    saved_levels = {name: logging.getLogger(name).level for name in names}
    saved_config = copy.deepcopy(dask.config.config)
    saved_env = dict(os.environ)
    import warnings

    filters = warnings.catch_warnings()
    filters.__enter__()
    tty_out, tty_err = message.get("tty", [False, False])
    try:
        os.chdir(message["cwd"])
        keeper.cwd = message["cwd"]
        sys.argv = ["daskcal", *message["argv"]]
        os.environ["COLUMNS"] = str(message.get("columns", 80))
        sys.stdout = _Stream(conn, "out", bool(tty_out), lock)
        sys.stderr = _Stream(conn, "err", bool(tty_err), lock)
        root.handlers = []
        yield
    finally:
        for handler in root.handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        root.handlers = saved_handlers
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        # the values it had (keys added meanwhile stay: defaults a module imported by the command registered)
        dask.config.update(dask.config.config, saved_config, priority="new")
        filters.__exit__(None, None, None)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
