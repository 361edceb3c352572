"""The products of one run, staged out of sight and committed together.

A command writes its products (Zarr stores, FITS files) under a hidden staging folder
beside them, ``<parent>/.daskcal-partial-<host>-<pid>-<id>/``, and moves them into place
only when every one of them is complete (:meth:`OutputSet.commit`):

- Nothing but the products themselves is ever replaced, and only with ``overwrite``: the
  folder they go in, and anything else in it, is left alone (it is created if missing).
- A product is moved into place with a no-replace rename (``renameat2(RENAME_NOREPLACE)``
  on Linux; ``link`` + ``unlink`` for files elsewhere), so a product that another run
  put there meanwhile is never replaced without ``overwrite``: the later run fails
  naming it. If one product of several cannot be placed, those already placed are
  moved back, so the products appear together or not at all.
- With ``overwrite``, a product that exists is swapped with its replacement in one step
  (``renameat2(RENAME_EXCHANGE)`` on Linux), so there is no moment without either (what
  ``daskcal resample --add`` relies on); elsewhere it is moved aside first.
- While chunks are being written, a staged Zarr store's root ``zarr.json`` is kept
  under another name (:func:`mark_incomplete`), so a store left by a killed run cannot
  be opened as a product; the name is restored once every chunk is written.
- Each staging folder holds a marker with the host, PID and start time of the process
  that made it. A later run that writes to the same folder removes the staging folders
  of processes that no longer exist on this host (a warning names each one); nothing
  without that marker is ever removed.
- Signals (SIGINT, SIGTERM, SIGHUP) are held back while products are being moved into
  place, so an interruption comes before or after the moves, never between them. Only
  SIGKILL in that window (microseconds) can leave some products placed and some staged.

A product that a run can resume (``resumable``: a resample mosaic) is written instead in a
hidden folder of its own beside it, ``<parent>/.daskcal-resume-<name>/``, that outlives the
run: its marker names the process writing it (and is touched every 30 s as a sign of life),
``run.json`` the run (:mod:`daskcal.io._resume`), ``chunks/`` the chunks completely written
(:mod:`daskcal.io._journal`). A run that fails or is interrupted keeps that folder (a warning
says where) when it holds a run record, and releases it; ``resume`` takes it over and continues
it. A run without ``resume`` removes such a folder of the same product, with a warning; no run
touches one whose writer is alive (on this host) or showed a sign of life in the last 2 minutes
(another host). Nothing without daskcal's marker is ever removed or reused.

Checks that need no data run in :meth:`OutputSet.__enter__`, before any cluster starts:
an existing product without ``overwrite``, a product that is, contains or sits inside
one of the inputs, an output folder that cannot be created or written (by creating the
staging folder itself: permission bits say nothing to root or on network file systems).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["RESUME_PREFIX", "RUN_FILE", "STAGE_PREFIX", "OutputSet", "WorkDirectory", "mark_complete", "mark_incomplete",
           "remove_stale_partials", "rename_exchange", "rename_noreplace", "resume_folder"]

log = logging.getLogger(__name__)

#: Name prefix of every staging folder.
STAGE_PREFIX = ".daskcal-partial-"
#: The marker file inside a staging folder.
MARKER = "daskcal-partial.json"
#: What a staged Zarr store's root ``zarr.json`` is called until its chunks are written.
HIDDEN_METADATA = "zarr.json.incomplete"
#: Name prefix of the folder that holds a resumable product while it is written (see :func:`resume_folder`).
RESUME_PREFIX = ".daskcal-resume-"
#: The marker of a resume folder: who writes it.
RESUME_MARKER = "daskcal-resume.json"
#: The record of the run a resume folder's product comes from (:mod:`daskcal.io._resume`); a folder
#: without it holds nothing to resume.
RUN_FILE = "run.json"
#: Seconds between two touches of a resume folder's marker by the run writing it; a marker of
#: another host untouched for 4 times as long is taken for that of a run that has stopped.
HEARTBEAT = 30.0
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)}


def _norm(p: str | os.PathLike) -> Path:
    """Absolute path with its parent's symlinks resolved (the last component kept as named)."""
    p = Path(os.path.abspath(os.fspath(p)))
    return p.parent.resolve() / p.name


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


class OutputSet:
    """The products of one run: checked before it starts, staged while it runs, committed together.

    Parameters
    ----------
    products : iterable of path-like
        Final paths of every product the run writes (stores or files).
    overwrite : bool, default False
        Replace products that exist (and only them). Without it an existing product is an
        error, raised on entering, and a product that appears while the run is writing is
        never replaced.
    inputs : iterable of path-like, optional
        The run's inputs: a product that is one of them, contains one, or sits inside one
        is refused.

    Use as a context manager: entering checks and creates the staging folders, leaving
    with an exception removes them (and any output folder the run created that is left
    empty); :meth:`commit` moves the products into place. ``path(final)`` is where to
    write each product.
    """

    def __init__(self, products: Iterable[str | os.PathLike], *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), resumable: Iterable[str | os.PathLike] = (),
                 resume: bool = False, resume_as: str | None = None) -> None:
        self.finals = [_norm(p) for p in products]
        self.overwrite = bool(overwrite)
        self.inputs = [_norm(p) for p in inputs]
        self.resumable = [_norm(p) for p in resumable]
        self.resume = bool(resume)
        self.resume_as = resume_as
        self._stages: dict[Path, Path] = {}
        self._created: list[Path] = []
        self._claimed: list[Path] = []
        self._heartbeat = None
        self.committed = False
        if any(p not in self.finals for p in self.resumable):
            msg = "a resumable product must be one of the products"
            raise ValueError(msg)
        if len({p.parent for p in self.resumable}) > 1 or (resume_as is None and len(self.resumable) > 1):
            msg = "resumable products share one folder (resume_as names their resume folder)"
            raise ValueError(msg)
        if len(set(self.finals)) != len(self.finals):
            seen = set()
            dup = next(str(p) for p in self.finals if p in seen or seen.add(p))
            msg = f"output {dup!r} is named twice in one run"
            raise ValueError(msg)

    # -- before the run ---------------------------------------------------------------
    def check(self) -> None:
        """Refuse existing products (without overwrite) and products that overlap an input."""
        for final in self.finals:
            for inp in self.inputs:
                if _inside(inp, final) or _inside(final, inp):
                    what = "is" if inp == final else ("contains" if _inside(inp, final) else "is inside")
                    msg = f"output {str(final)!r} {what} the input {str(inp)!r}; choose another output"
                    raise ValueError(msg)
            if os.path.lexists(final) and not self.overwrite:
                msg = f"output {str(final)!r} already exists; pass overwrite=True (--overwrite) to replace it"
                raise FileExistsError(msg)
            if os.path.lexists(final.parent) and not final.parent.is_dir():
                msg = f"output folder {str(final.parent)!r} is not a directory"
                raise NotADirectoryError(msg)

    def __enter__(self) -> OutputSet:
        self.check()
        try:
            for final in self.finals:
                parent = final.parent
                if parent not in self._stages:
                    self._make_parent(parent)
                    remove_stale_partials(parent)
                    self._stages[parent] = _make_stage(parent, [f.name for f in self.finals if f.parent == parent])
            if self.resumable:
                self._claimed.append(_claim(self._resume_folder(), self.resume))
            for final in self.finals:
                if final not in self.resumable and os.path.lexists(resume_folder(final)):
                    _remove_tree(_claim(resume_folder(final), False))  # a run that cannot resume it: stale
            if self._claimed:
                self._heartbeat = _Heartbeat([c / RESUME_MARKER for c in self._claimed])
        except BaseException:
            self._abort()
            raise
        return self

    def _make_parent(self, parent: Path) -> None:
        missing = []
        p = parent
        while not os.path.lexists(p):
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise _named(exc, p, "cannot create the output folder") from None
            self._created.append(p)

    def path(self, final: str | os.PathLike) -> Path:
        """Where to write the product whose final path is ``final`` (inside its staging folder)."""
        final = _norm(final)
        if final not in self.finals:
            msg = f"{str(final)!r} is not one of this run's outputs {[str(f) for f in self.finals]}"
            raise ValueError(msg)
        if final in self.resumable:
            return self._resume_folder() / final.name
        return self._stages[final.parent] / final.name

    def _resume_folder(self) -> Path:
        return resume_folder(self.resumable[0], self.resume_as)

    # -- after the run ----------------------------------------------------------------
    def commit(self) -> list[Path]:
        """Move every product into place, all or none; return the final paths.

        A product missing from its staging folder is an error (the run did not write it).
        """
        for final in self.finals:
            staged = self.path(final)
            if not os.path.lexists(staged):
                msg = f"output {str(final)!r} was not written by this run"
                raise FileNotFoundError(msg)
            mark_complete(staged)
        placed: list[tuple[Path, Path, Path | None]] = []  # (staged, final, old product moved aside)
        with _signals_held():
            try:
                for final in self.finals:
                    staged = self.path(final)
                    old = None
                    if self.overwrite and os.path.lexists(final) and rename_exchange(staged, final):
                        placed.append((staged, final, _EXCHANGED))  # one step: the old product is now at staged
                        continue
                    if self.overwrite and os.path.lexists(final):
                        old = staged.parent / f".old-{final.name}"
                        os.replace(final, old)
                    try:
                        rename_noreplace(staged, final)
                    except FileExistsError:
                        if old is not None:
                            os.replace(old, final)
                        msg = (f"output {str(final)!r} appeared while this run was writing it (another run?); "
                               f"it was left as it is; pass --overwrite to replace it")
                        raise FileExistsError(msg) from None
                    placed.append((staged, final, old))
            except BaseException:
                for staged, final, old in reversed(placed):
                    if old is _EXCHANGED:
                        rename_exchange(staged, final)
                        continue
                    os.replace(final, staged)
                    if old is not None:
                        os.replace(old, final)
                raise
        self.committed = True
        self._stop_heartbeat()
        for stage in [*self._stages.values(), *self._claimed]:
            _remove_tree(stage)
        return list(self.finals)

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self._abort()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def _abort(self) -> None:
        self._stop_heartbeat()
        for stage in self._stages.values():
            _remove_tree(stage)
        for folder in self._claimed:
            if (folder / RUN_FILE).is_file():
                _release(folder)
                log.warning("the partial product is kept in %s; run the same command with --resume (resume=True) "
                            "to continue it", folder)
            else:
                _remove_tree(folder)  # stopped before any chunk could be written: nothing to resume
        self._claimed = []
        for p in reversed(self._created):
            with contextlib.suppress(OSError):
                p.rmdir()  # only if the run left it empty


class WorkDirectory:
    """A temporary folder for a run's scratch files (an outlier stack, a median buffer).

    It is a marked staging folder, so a later run removes it if this process dies without
    cleaning up (SIGKILL, a node's crash). ``name`` is its path; :meth:`cleanup` removes it.
    """

    def __init__(self, parent: str | os.PathLike | None = None, purpose: str = "scratch") -> None:
        import tempfile

        folder = _norm(parent if parent is not None else tempfile.gettempdir())
        remove_stale_partials(folder)
        self.path = _make_stage(folder, [purpose])
        self.name = str(self.path)

    def cleanup(self) -> None:
        """Remove the folder and everything in it (again: a no-op)."""
        _remove_tree(self.path)

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<WorkDirectory {self.name}>"


def resume_folder(final: str | os.PathLike, name: str | None = None) -> Path:
    """The hidden folder beside ``final`` in which a resumable product is written (see :class:`OutputSet`):
    ``.daskcal-resume-<name>``, by default the product's name (several products written together share
    the folder their ``resume_as`` names)."""
    final = _norm(final)
    return final.parent / f"{RESUME_PREFIX}{name or final.name}"


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
            "command": " ".join(sys.argv)[:500]}


def _write_marker(folder: Path, marker: dict) -> None:
    tmp = folder / f".{RESUME_MARKER}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, folder / RESUME_MARKER)


def _claim(folder: Path, resume: bool) -> Path:
    """Create, take over (``resume``) or replace the resume ``folder``; return it."""
    final = folder.parent / folder.name.removeprefix(RESUME_PREFIX)  # what it is for, in messages
    if os.path.lexists(folder):
        try:
            marker = json.loads((folder / RESUME_MARKER).read_text())
            dict(marker)
        except (OSError, ValueError, TypeError):
            msg = (f"{folder} is in the way of {final} and has no marker of daskcal's: daskcal leaves it alone; "
                   f"remove it yourself if it is not needed")
            raise FileExistsError(msg) from None
        busy = _writer_alive(folder, marker)
        if busy:
            msg = f"{final} is being written by another daskcal run ({busy}); wait for it to finish, or stop it"
            raise FileExistsError(msg)
        if not resume:
            log.warning("removing %s, the partial %s of a daskcal run that stopped (pass --resume, resume=True, to "
                        "continue such a run instead)", folder, final.name)
            _remove_tree(folder)
        elif not (folder / RUN_FILE).is_file():
            log.warning("removing %s: the run that began it stopped before it wrote anything to resume", folder)
            _remove_tree(folder)
        else:
            taken = folder / f"{RESUME_MARKER}.taken-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(folder / RESUME_MARKER, taken)  # one run of several resuming at once gets it
            except FileNotFoundError:
                msg = f"{final}: another daskcal run took over its partial product {folder} at the same moment"
                raise FileExistsError(msg) from None
            _write_marker(folder, {**_owner(), "product": final.name})
            taken.unlink()
            return folder
    try:
        folder.mkdir()
    except FileExistsError:
        msg = f"{final}: another daskcal run began writing it at the same moment ({folder})"
        raise FileExistsError(msg) from None
    except OSError as exc:
        raise _named(exc, final.parent, "cannot write in the output folder") from None
    _write_marker(folder, {**_owner(), "product": final.name})
    return folder


def _release(folder: Path) -> None:
    """Mark a resume folder as written by no one (its run has stopped)."""
    try:
        marker = json.loads((folder / RESUME_MARKER).read_text())
        _write_marker(folder, {**marker, "pid": None})
    except (OSError, ValueError):
        log.warning("could not release %s", folder)


def _writer_alive(folder: Path, marker: dict) -> str | None:
    """Who still writes a resume folder (``"PID 123 on host h"``), or None if no one does."""
    pid, host = marker.get("pid"), marker.get("host")
    if pid is None:
        return None
    who = f"PID {pid} on {host}"
    if host == socket.gethostname():
        if int(pid) == os.getpid():
            return f"{who}, this process"
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return who
        started, now = marker.get("started"), _process_start(int(pid))
        reused = started is not None and now is not None and abs(now - started) > 1.0
        return None if reused else who
    age = time.time() - (folder / RESUME_MARKER).stat().st_mtime
    if age < 4 * HEARTBEAT:
        return f"{who}, last seen {age:.0f} s ago"
    log.warning("%s was being written by %s, not seen for %.0f s: taken for stopped", folder, who, age)
    return None


class _Heartbeat:
    """Touches the markers of the resume folders a run writes every :data:`HEARTBEAT` seconds."""

    def __init__(self, markers: list[Path]) -> None:
        import threading

        self.markers = markers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daskcal-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            for marker in self.markers:
                with contextlib.suppress(OSError):
                    os.utime(marker)

    def stop(self) -> None:
        self._stop.set()


def _make_stage(parent: Path, names: list[str]) -> Path:
    host = socket.gethostname().replace("-", "_")[:40] or "host"
    stage = parent / f"{STAGE_PREFIX}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        stage.mkdir()
        marker = {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid()),
                  "products": names, "command": " ".join(sys.argv)[:500]}
        (stage / MARKER).write_text(json.dumps(marker))
    except OSError as exc:
        _remove_tree(stage)
        raise _named(exc, parent, "cannot write in the output folder") from None
    return stage


def _named(exc: OSError, path: Path, what: str) -> OSError:
    """The same kind of OSError, with a one-line message naming ``path``."""
    reason = exc.strerror or str(exc)
    cls = {errno.EACCES: PermissionError, errno.EPERM: PermissionError, errno.ENOTDIR: NotADirectoryError}.get(
        exc.errno, OSError)
    named = cls(f"{what} {str(path)!r}: {reason}")
    named.errno = exc.errno
    return named


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - no psutil, or no such process: unknown
        return None


def _is_stale(stage: Path) -> bool:
    """True if ``stage`` is a staging folder of a process that no longer runs on this host."""
    try:
        marker = json.loads((stage / MARKER).read_text())
        pid = int(marker["pid"])
        host = marker["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not ours (or being created right now): leave it
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    started = marker.get("started")
    now = _process_start(pid)
    return started is not None and now is not None and abs(now - started) > 1.0  # PID reused


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove the staging folders in ``folder`` left by daskcal runs that no longer exist.

    Only folders named ``.daskcal-partial-*`` that hold daskcal's marker naming a dead
    process of this host are removed; a warning names each. Returns them.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(STAGE_PREFIX) and entry.is_dir() and _is_stale(entry):
            log.warning("removing %s, left by a daskcal run that was killed", entry)
            _remove_tree(entry)
            removed.append(entry)
    return removed


def mark_incomplete(store: str | os.PathLike) -> None:
    """Keep ``store``'s root ``zarr.json`` under another name, so the store cannot be opened."""
    meta = Path(store) / "zarr.json"
    if meta.exists():
        os.replace(meta, Path(store) / HIDDEN_METADATA)


def mark_complete(store: str | os.PathLike) -> None:
    """Undo :func:`mark_incomplete` (nothing to do for other paths)."""
    hidden = Path(store) / HIDDEN_METADATA
    if hidden.exists():
        os.replace(hidden, Path(store) / "zarr.json")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back (main thread only); they are delivered on leaving."""
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
#: What :meth:`OutputSet.commit` records of a product put in place by :func:`rename_exchange`.
_EXCHANGED = object()


def rename_exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap ``a`` and ``b`` (both exist) in one step, Linux's ``renameat2(RENAME_EXCHANGE)``: no moment
    without either, even under SIGKILL. Returns False, having done nothing, where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fsdecode(b))


_warned_fallback = False


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError if ``dst`` exists (never replacing it).

    Linux's ``renameat2(RENAME_NOREPLACE)`` makes the check and the rename one step. Where
    it is missing or the file system refuses it, a file is linked then unlinked (also
    atomic); a directory is renamed after a check, which another process could race (a
    warning says so once).
    """
    global _warned_fallback
    src_b, dst_b = os.fsencode(src), os.fsencode(dst)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "renameat2", None)
        if fn is not None:
            if fn(_AT_FDCWD, src_b, _AT_FDCWD, dst_b, _RENAME_NOREPLACE) == 0:
                return
            err = ctypes.get_errno()
            if err in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(err, os.strerror(err), os.fsdecode(dst))
            if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                raise OSError(err, os.strerror(err), os.fsdecode(dst))
    if not os.path.isdir(src):
        os.link(src, dst)  # EEXIST if dst exists
        os.unlink(src)
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dst))
    if not _warned_fallback:
        log.warning("this file system has no no-replace rename: a product written at the same moment by "
                    "another run could be replaced")
        _warned_fallback = True
    os.rename(src, dst)


def _remove_tree(path: Path) -> None:
    """Remove ``path`` (a staging folder): first renamed away, so a late writer cannot add to it."""
    if not os.path.lexists(path):
        return
    trash = path.with_name(f"{path.name}.removing-{uuid.uuid4().hex[:6]}")
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    for _ in range(5):
        shutil.rmtree(trash, ignore_errors=True)
        if not os.path.lexists(trash):
            return
        time.sleep(0.1)
    log.warning("could not remove %s completely", trash)
