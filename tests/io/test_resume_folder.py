"""Who may take over, continue or remove a resumable product's folder (``.daskcal-resume-<name>``):
never one whose writer is alive (on this host) or was seen lately (another host), never one without
daskcal's marker; a stopped run's folder is continued with ``resume`` and removed, with a warning,
without it."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from daskcal.io._outputs import HEARTBEAT, RESUME_MARKER, RUN_FILE, OutputSet, resume_folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _partial(final, *, pid, host=None, run=True, age=0.0):
    folder = resume_folder(final)
    folder.mkdir(parents=True)
    (folder / final.name).mkdir()
    (folder / final.name / "chunk").write_text("written")
    marker = folder / RESUME_MARKER
    marker.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": None}))
    if run:
        (folder / RUN_FILE).write_text("{}")
    if age:
        os.utime(marker, (time.time() - age, time.time() - age))
    return folder


def _enter(final, resume):
    outputs = OutputSet([final], resumable=[final], resume=resume)
    outputs.__enter__()
    return outputs


@pytest.mark.parametrize("resume", [True, False])
def test_a_folder_whose_writer_is_alive_is_refused_and_kept(tmp_path, resume):
    final = tmp_path / "m.zarr"
    folder = _partial(final, pid=os.getpid())
    with pytest.raises(FileExistsError, match=f"m.zarr is being written by another daskcal run \\(PID {os.getpid()}"):
        _enter(final, resume)
    assert (folder / "m.zarr" / "chunk").read_text() == "written"


def test_another_hosts_folder_is_refused_while_its_writer_shows_signs_of_life(tmp_path):
    final = tmp_path / "m.zarr"
    folder = _partial(final, pid=1, host="elsewhere", age=HEARTBEAT)
    with pytest.raises(FileExistsError, match="PID 1 on elsewhere, last seen"):
        _enter(final, True)
    os.utime(folder / RESUME_MARKER, (time.time() - 5 * HEARTBEAT,) * 2)  # silent for 2.5 minutes: stopped
    outputs = _enter(final, True)
    assert (outputs.path(final) / "chunk").read_text() == "written"  # continued, not emptied
    assert json.loads((folder / RESUME_MARKER).read_text())["pid"] == os.getpid()
    outputs.__exit__(RuntimeError, RuntimeError("stop"), None)
    assert json.loads((folder / RESUME_MARKER).read_text())["pid"] is None  # released, kept (it has run.json)


def test_a_folder_without_daskcals_marker_is_never_touched(tmp_path):
    final = tmp_path / "m.zarr"
    folder = resume_folder(final)
    folder.mkdir()
    (folder / "mine.txt").write_text("not daskcal's")
    for resume in (True, False):
        with pytest.raises(FileExistsError, match="has no marker of daskcal's"):
            _enter(final, resume)
    assert (folder / "mine.txt").read_text() == "not daskcal's"


def test_without_resume_a_stopped_runs_folder_is_removed_with_a_warning(tmp_path, caplog):
    final = tmp_path / "m.zarr"
    folder = _partial(final, pid=_dead_pid())
    with caplog.at_level(logging.WARNING):
        outputs = _enter(final, False)
    assert f"removing {folder}, the partial m.zarr of a daskcal run that stopped" in caplog.text
    assert not outputs.path(final).exists()
    outputs.__exit__(None, None, None)
    assert not folder.exists()  # it held no run record: nothing kept


def test_with_resume_a_folder_without_a_run_record_starts_afresh(tmp_path, caplog):
    final = tmp_path / "m.zarr"
    folder = _partial(final, pid=_dead_pid(), run=False)
    with caplog.at_level(logging.WARNING):
        outputs = _enter(final, True)
    assert "stopped before it wrote anything to resume" in caplog.text
    assert not outputs.path(final).exists()
    outputs.__exit__(None, None, None)
    assert not folder.exists()
