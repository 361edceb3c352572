"""The ``daskcal`` command's side of ``daskcal serve``: hand the command line to a running server (standard library only).

A ``daskcal serve`` process has imported everything once and keeps an embedded cluster
running; :func:`run_on_server` sends it this process's command line, working directory
and terminal state over a Unix socket, prints what the command prints there and returns
its exit status. Ctrl-C, SIGTERM and SIGHUP are passed on (the command stops there as it
would here); a client that dies makes the server stop its command as for SIGTERM.

The socket lives in a folder only this user can enter (``$XDG_RUNTIME_DIR/daskcal``, else
``/tmp/daskcal-UID``) under a name derived from this installation (the Python executable,
daskcal's folder and its files' modification times), so a command only ever reaches a server
running the same code. When no server runs there, nothing else happens (about a millisecond).
The server refuses a command whose environment differs from its own in a variable that
changes what daskcal computes or where it writes (:data:`ENV_PREFIXES`, :data:`ENV_NAMES`);
the command then runs in this process after saying why. ``DASKCAL_SERVER=0`` never uses one.

Messages are JSON objects, each preceded by its length (4 bytes, big-endian).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path

__all__ = ["ENV_NAMES", "ENV_PREFIXES", "relevant_environ", "run_on_server", "socket_path"]

#: Environment variables that must be equal in the server and the client, by prefix ...
ENV_PREFIXES = ("DASK", "NUMBA", "OMP_", "MKL_", "OPENBLAS_", "MALLOC_", "PYTHON", "SLURM", "PBS_", "ASDF", "CRDS",
                "XDG_CONFIG", "XDG_CACHE")
#: ... and by name.
ENV_NAMES = ("PATH", "HOME", "TMPDIR", "TMP", "TEMP", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD")
#: ``0``, ``no``, ``off`` or ``false``: never hand a command to a server.
SWITCH = "DASKCAL_SERVER"
_NOT_COMPARED = (SWITCH, "PYTHONDONTWRITEBYTECODE")
_HEADER = struct.Struct(">I")
#: The signals a client passes on to its command.
SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def relevant_environ(environ=None) -> dict[str, str]:
    """The variables of ``environ`` (default ``os.environ``) a server and its client must share."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items()
            if (k.startswith(ENV_PREFIXES) or k in ENV_NAMES) and k not in _NOT_COMPARED}


def socket_dir() -> Path:
    """The folder of this user's server sockets: ``$XDG_RUNTIME_DIR/daskcal``, else ``/tmp/daskcal-UID``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "daskcal" if runtime else Path("/tmp") / f"daskcal-{os.getuid()}"


def installation_key() -> str:
    """A digest of this installation: the Python executable and daskcal's folder."""
    text = "\0".join((sys.executable, str(Path(__file__).resolve().parents[1])))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def code_key() -> str:
    """A digest of the modification times of daskcal's files (``.py``, ``.toml``): changes when one is edited."""
    latest = 0
    for folder, _, files in os.walk(Path(__file__).resolve().parents[1]):
        for name in files:
            if name.endswith((".py", ".toml")):
                with contextlib.suppress(OSError):
                    latest = max(latest, os.stat(os.path.join(folder, name)).st_mtime_ns)
    return hashlib.sha256(str(latest).encode()).hexdigest()[:8]


def socket_path() -> Path:
    """Where this installation's server listens (see :func:`socket_dir`, :func:`installation_key`, :func:`code_key`)."""
    return socket_dir() / f"serve-{installation_key()}-{code_key()}.sock"


def stale_sockets(path: Path) -> list[Path]:
    """The sockets of servers of this installation that run other versions of its files than ``path``'s."""
    prefix = path.name.rsplit("-", 1)[0] + "-"
    try:
        return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p != path)
    except OSError:
        return []


#: ``struct ucred`` (pid, uid, gid) of ``SO_PEERCRED``.
_UCRED = struct.Struct("3i")


def _listening(path: Path) -> bool:
    """Whether a server listens at socket ``path`` (a killed one leaves its socket file)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _supported() -> bool:
    """Whether this system has Unix sockets and user ids (not Windows)."""
    return hasattr(socket, "AF_UNIX") and hasattr(os, "getuid")


def _peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a connected Unix socket (Linux's ``SO_PEERCRED``;
    elsewhere this user's: the socket's folder, closed to others, is then the only check)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return os.getuid()
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]


def _private(folder: Path) -> bool:
    """Whether ``folder`` belongs to this user and no one else may enter or change it."""
    try:
        st = folder.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def send(sock: socket.socket, message: dict) -> None:
    """Send one message."""
    body = json.dumps(message).encode()
    sock.sendall(_HEADER.pack(len(body)) + body)


def receive(sock: socket.socket) -> dict | None:
    """The next message, or None when the other side has closed the connection."""
    head = _read(sock, _HEADER.size)
    if head is None:
        return None
    body = _read(sock, _HEADER.unpack(head)[0])
    return None if body is None else json.loads(body)


def _read(sock: socket.socket, n: int) -> bytes | None:
    parts = []
    while n:
        part = sock.recv(min(n, 1 << 20))
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def request(argv: list[str]) -> dict:
    """What the server needs to run ``argv`` as this process would."""
    import shutil

    return {
        "argv": list(argv),
        "cwd": os.getcwd(),
        "env": relevant_environ(),
        "tty": [_is_terminal(sys.stdout), _is_terminal(sys.stderr)],
        "columns": shutil.get_terminal_size().columns,
    }


def run_on_server(argv: list[str]) -> int | None:
    """Run ``argv`` on this installation's server and return its exit status; None if there is none
    to use (none runs, it is busy with another command, or it refused this one: then said on stderr)."""
    if os.environ.get(SWITCH, "").strip().lower() in ("0", "no", "off", "false") or not _supported():
        return None
    path = socket_path()
    if not path.exists():
        if _private(path.parent) and any(map(_listening, stale_sockets(path))):
            print("daskcal: the running 'daskcal serve' has other versions of daskcal's files than this command: "
                  "running in this process (restart the server to use it again)", file=sys.stderr)
        return None
    if not _private(path.parent):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        if _peer_uid(sock) != os.getuid():  # only ever a server of this user
            sock.close()
            return None
        send(sock, request(argv))
        reply = receive(sock)
    except OSError:  # a socket left by a server that was killed; a server stopping
        sock.close()
        return None
    if reply is None or reply.get("busy"):
        sock.close()
        return None
    if "refused" in reply:
        sock.close()
        print(f"daskcal: not using the server at {path}: {reply['refused']}; running in this process", file=sys.stderr)
        return None
    return _follow(sock)


def _follow(sock: socket.socket) -> int:
    """Print the command's output as it comes and pass this process's signals on; its exit status."""
    previous = {}

    def forward(signum, frame):
        with contextlib.suppress(OSError):
            send(sock, {"signal": signal.Signals(signum).name})

    for name in SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, forward)
    try:
        while True:
            try:
                message = receive(sock)
            except InterruptedError:  # pragma: no cover - recv retries by itself (PEP 475)
                continue
            except OSError:
                message = None
            if message is None:
                print("daskcal: the server stopped during the command (its products, if any, are incomplete and "
                      "were not published)", file=sys.stderr)
                return 1
            if "exit" in message:
                return int(message["exit"])
            for key, stream in (("out", sys.stdout), ("err", sys.stderr)):
                if key in message:
                    with contextlib.suppress(OSError, ValueError):
                        stream.write(message[key])
                        stream.flush()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
