"""Console progress of a run on a ``distributed`` client: whole lines, a few of them, when stdout is not a terminal."""

import time

import dask
import distributed
import pytest

from daskcal.io import _progress
from daskcal.io._atomic import compute_on_client


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c, \
            distributed.Client(c) as client:  # the default client, as in the CLI
        yield client


def _slow(k):
    time.sleep(0.1)
    return k


def test_progress_into_a_log_is_a_few_whole_lines(client, capsys):
    tasks = [dask.delayed(_slow)(k) for k in range(30)]  # 3 s on one thread: ~30 redraws of dask's bar
    assert compute_on_client(client, tasks, progress=True) == list(range(30))
    out = capsys.readouterr().out
    assert "\r" not in out and "\33" not in out  # no redraws in place, no terminal control sequences
    lines = out.splitlines()
    assert 2 <= len(lines) <= 100 // _progress.STEP_PERCENT + 2
    assert all("% Completed" in line for line in lines)
    assert lines[-1].startswith(f"[{'#' * 40}] | 100% Completed")


def test_a_line_per_interval_when_progress_is_slow(client, capsys, monkeypatch):
    monkeypatch.setattr(_progress, "EVERY_SECONDS", 0.0)  # every update of the feed (1 s) is a line
    compute_on_client(client, [dask.delayed(_slow)(k) for k in range(25)], progress=True)
    assert len(capsys.readouterr().out.splitlines()) >= 3


def test_a_terminal_gets_dask_s_bar(client, capsys, monkeypatch):
    monkeypatch.setattr(_progress, "_is_terminal", lambda stream: True)
    compute_on_client(client, [dask.delayed(_slow)(k) for k in range(3)], progress=True)
    assert "\r[" in capsys.readouterr().out
