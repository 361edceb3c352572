"""``daskcal serve``: commands handed to a running server give what they give in their own process."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import daskcal
from daskcal.cli import _server
from daskcal.cli._serve import _differences
from tests.cli._resume_common import CLUSTER_WARNINGS, tree_bytes

pytestmark = pytest.mark.filterwarnings(*CLUSTER_WARNINGS)


@pytest.fixture
def env(tmp_path_factory):
    """An environment whose server sockets live in a fresh, short folder (not the developer's), servers allowed."""
    runtime = Path(tempfile_short())
    e = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    e.pop(_server.SWITCH, None)
    return e


def tempfile_short() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="dc-", dir="/tmp")


class Serving:
    """``python -m daskcal serve`` in its own process; its stdout lines in a queue."""

    def __init__(self, env: dict, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(_with_sigint("SIG_IGN", "serve", *args), env=env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"the server exited: {''.join(self.seen)}"
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not printed in {timeout} s: {''.join(self.seen)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def serving(env, tmp_path):
    started = []

    def start(*args):
        s = Serving(env, tmp_path, *args)
        started.append(s)
        s.wait_for("daskcal serve: ready")
        return s

    yield start
    for s in started:
        s.stop()


def _daskcal(env, cwd, *args, module=True, **kw):
    """``python -m daskcal ARGS`` (``module=False``: ``python ARGS``) in ``cwd``."""
    cmd = [sys.executable, *(["-m", "daskcal"] if module else []), *map(str, args)]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False, **kw)


def test_differences_names_the_variables():
    assert _differences({"A": "1", "B": "2"}, {"A": "1", "B": "2"}) == ""
    assert _differences({"A": "1", "B": "2"}, {"A": "1", "C": "3"}) == "B, C"
    assert _server.relevant_environ({"DASK_X": "1", "PATH": "/bin", "TERM": "xterm", "DASKCAL_SERVER": "1"}) == {
        "DASK_X": "1", "PATH": "/bin"}


def test_no_server_or_a_stale_socket_runs_in_the_process(env, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    monkeypatch.delenv(_server.SWITCH, raising=False)
    assert _server.run_on_server(["recipes"]) is None  # no socket
    path = _server.socket_path()
    path.parent.mkdir(mode=0o700, parents=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # bound, never listening: what a killed server leaves
    assert path.exists() and _server.run_on_server(["recipes"]) is None
    monkeypatch.setenv(_server.SWITCH, "0")
    assert _server.run_on_server(["recipes"]) is None


@pytest.mark.slow
def test_a_command_on_the_server_equals_one_in_its_own_process(env, tmp_path, serving):
    work = tmp_path / "work"
    work.mkdir()
    daskcal.save(daskcal.simulate((1, 5, 48, 40), seed=3, chunks=(24, 20)).ramps, work / "ramps.zarr")
    server = serving()
    # relative paths, from a folder that is not the server's: resolved as the command's own process would
    on = _daskcal(env, work, "detector1", "ramps.zarr", "on", "--no-progress")
    assert on.returncode == 0, on.stderr
    assert "detector1 ramps.zarr on --no-progress" in server.wait_for(f"(in {work}): exit 0")
    here = _daskcal(dict(env, DASKCAL_SERVER="0"), work, "detector1", "ramps.zarr", "here", "--no-progress")
    assert here.returncode == 0, here.stderr
    assert tree_bytes(work / "on") == tree_bytes(work / "here")
    assert on.stdout.splitlines()[1:] == [line.replace("here", "on") for line in here.stdout.splitlines()[1:]]
    # the kept cluster serves the next command; a bad input is one line on the client's stderr, exit 2
    again = _daskcal(env, work, "detector1", "ramps.zarr", "again", "--no-progress")
    assert again.returncode == 0 and tree_bytes(work / "again") == tree_bytes(work / "here")
    server.wait_for(f"(in {work}): exit 0")
    bad = _daskcal(env, work, "detector1", "missing.zarr", "bad", "--no-progress")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "missing.zarr" in bad.stderr, bad.stderr
    server.wait_for(f"(in {work}): exit 2")
    usage = _daskcal(env, work, "detector1")
    assert usage.returncode == 2 and "usage:" in usage.stderr
    # another environment: said, and run in the command's own process
    other = _daskcal(dict(env, DASK_DISTRIBUTED__ADMIN__TICK__LIMIT="5s"), work, "recipes")
    assert other.returncode == 0 and "detector1" in other.stdout
    assert "not using the server" in other.stderr and "DASK_DISTRIBUTED__ADMIN__TICK__LIMIT" in other.stderr
    # a server running files edited since: said, and the command runs in its own process
    where = _daskcal(env, work, "-c", "import daskcal; print(daskcal.__file__)", module=False).stdout.strip()
    code = Path(where).parent / "cli" / "_recipes.py"  # the daskcal the commands import (CI installs a copy)
    stat = code.stat()
    os.utime(code, ns=(stat.st_atime_ns, time.time_ns() + 10**9))  # the newest of daskcal's files
    try:
        edited = _daskcal(env, work, "recipes")
        assert edited.returncode == 0 and "detector1" in edited.stdout
        assert "has other versions of daskcal's files" in edited.stderr, edited.stderr
        stop = _daskcal(env, work, "serve", "--stop")  # stops it all the same
    finally:
        os.utime(code, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert stop.returncode == 0, stop.stderr
    server.wait_for("daskcal serve: stopped")
    assert server.proc.wait(timeout=60) == 0
    assert not _server_sockets(env)


@pytest.mark.slow
def test_ctrl_c_reaches_the_command_on_the_server(env, tmp_path, serving):
    work = tmp_path / "work"
    work.mkdir()
    # 256 chunks for one worker thread: seconds of work left after the first progress line and the busy check
    daskcal.save(daskcal.simulate((1, 16, 2048, 2048), seed=1, chunks=(128, 128)).ramps, work / "ramps.zarr")
    server = serving("--no-cluster")
    # the command as typed in a terminal (Ctrl-C not ignored, whatever this test's own disposition), the server as
    # 'daskcal serve &' in a script starts it (Ctrl-C ignored): the command obeys its client's Ctrl-C all the same
    proc = subprocess.Popen(_with_sigint("default_int_handler", "detector1", "ramps.zarr", "out", "--workers", "1"),
                            env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the first progress line: the graph runs on the server
    assert "Completed" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    # meanwhile another command runs in its own process, quietly
    busy = _daskcal(env, work, "recipes")
    assert busy.returncode == 0 and "detector1" in busy.stdout and busy.stderr == "", busy.stderr
    assert proc.poll() is None, "the slow command ended before its Ctrl-C"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; products that were not complete were removed" in err
    assert not (work / "out" / "rate.zarr").exists()
    server.wait_for("exit 130")
    assert server.proc.poll() is None  # the server goes on; its cluster was replaced
    small = work / "small.zarr"
    daskcal.save(daskcal.simulate((1, 4, 32, 30), seed=2).ramps, small)
    done = _daskcal(env, work, "detector1", "small.zarr", "o2", "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    server.wait_for("exit 0")


def _with_sigint(handler: str, *args: str) -> list[str]:
    """``python -m daskcal ARGS`` with SIGINT's handler ``signal.<handler>`` (whatever this process's is)."""
    code = (f"import runpy, signal; signal.signal(signal.SIGINT, signal.{handler}); "
            "runpy.run_module('daskcal', run_name='__main__')")
    return [sys.executable, "-c", code, *args]


def _server_sockets(env) -> list:
    return list((Path(env["XDG_RUNTIME_DIR"]) / "daskcal").glob("*.sock"))
