"""Product chunk files are written to disk and dropped from the page cache in the background."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import dask
import numpy as np
import pytest
import xarray as xr

from daskcal.io import _writeback
from daskcal.io._atomic import save_products

pytestmark = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")


def _drained(timeout: float = 30.0) -> None:
    q = _writeback._queue()
    deadline = time.monotonic() + timeout
    while q.unfinished_tasks:
        assert time.monotonic() < deadline, "the background thread did not get through its queue"
        time.sleep(0.01)


@pytest.fixture
def calls(monkeypatch):
    """The (call, path) the background thread makes, in order."""
    seen = []
    real_fadvise = os.posix_fadvise

    def fdatasync(fd):
        seen.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))

    def fadvise(fd, offset, length, advice):
        seen.append(("fadvise", os.readlink(f"/proc/self/fd/{fd}"), offset, length, advice))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(_writeback.os, "fdatasync", fdatasync)
    monkeypatch.setattr(_writeback.os, "posix_fadvise", fadvise)
    return seen


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_released_files_are_synced_dropped_and_closed_even_once_renamed(tmp_path, calls):
    paths = [tmp_path / f"c{k}" for k in range(3)]
    for p in paths:
        p.write_bytes(b"x" * 100_000)
    before = _open_fds()
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    moved = tmp_path / "moved"
    moved.mkdir()
    paths = [p.rename(moved / p.name) for p in paths]  # as a staged product committed meanwhile
    _writeback.release(fds)
    _drained()
    assert [c[:2] for c in calls] == [(op, str(p)) for p in paths for op in ("fdatasync", "fadvise")]
    assert all(c[2:] == (0, 0, os.POSIX_FADV_DONTNEED) for c in calls if c[0] == "fadvise")
    assert _open_fds() == before  # every descriptor closed
    assert [p.read_bytes() for p in paths] == [b"x" * 100_000] * 3  # a hint: the files are as written


def test_config_turns_it_off_and_a_full_queue_does_not_wait(tmp_path, calls, monkeypatch):
    path = tmp_path / "c"
    path.write_bytes(b"y")
    before = _open_fds()
    with dask.config.set({_writeback.CONFIG: False}):
        _writeback.release([os.open(path, os.O_RDONLY)])
    _drained()
    assert calls == [] and _open_fds() == before
    monkeypatch.setattr(_writeback, "QUEUED", 2)
    monkeypatch.setattr(_writeback, "_started", None)  # a new thread and queue of 2
    t0 = time.perf_counter()
    _writeback.release([os.open(path, os.O_RDONLY) for _ in range(200)])
    assert time.perf_counter() - t0 < 1.0
    _drained()
    assert 2 <= len([c for c in calls if c[0] == "fadvise"]) <= 3
    assert _open_fds() == before


def test_a_saved_product_is_out_of_the_page_cache_and_equal(tmp_path):
    if shutil.which("fincore") is None:
        pytest.skip("util-linux's fincore is not installed")
    values = np.random.default_rng(1).normal(size=(512, 512)).astype("f4")
    ds = xr.Dataset({"data": (("y", "x"), values)}).chunk({"y": 128, "x": 256})
    with dask.config.set(scheduler="threads"):
        save_products({"p": ds}, tmp_path)  # a command's products (daskcal.save of a mosaic goes the same way)
    _drained()
    chunks = sorted(str(p) for p in (tmp_path / "p.zarr" / "data").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunks) == 8
    out = subprocess.run(["fincore", "--raw", "--noheadings", "--output", "PAGES", *chunks], capture_output=True,
                         text=True, check=True)
    assert [int(n) for n in out.stdout.split()] == [0] * 8  # none of their pages is cached
    with xr.open_zarr(tmp_path / "p.zarr", consolidated=False) as back:
        np.testing.assert_array_equal(back["data"].values, values)
