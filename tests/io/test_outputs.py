"""Products are staged, committed together, never replace what the run did not write, never openable half-written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import sys

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from daskcal.io import _outputs
from daskcal.io._atomic import atomic_path, save_dataset, save_products
from daskcal.io._outputs import STAGE_PREFIX, OutputSet, mark_incomplete, remove_stale_partials, rename_noreplace


def _stages(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(STAGE_PREFIX))


def _ds(value, shape=(20, 24), chunks=(10, 12)):
    return xr.Dataset({"data": (("y", "x"), da.full(shape, value, dtype="f4", chunks=chunks))})


def test_overwrite_replaces_only_the_products(tmp_path):
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "raw.zarr").mkdir()
    save_products({"rate": _ds(1.0)}, out)
    with pytest.raises(FileExistsError, match="already exists"):
        save_products({"rate": _ds(2.0)}, out)
    save_products({"rate": _ds(3.0)}, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "raw.zarr").is_dir()
    with xr.open_zarr(out / "rate.zarr", consolidated=False) as got:
        assert float(got["data"].max()) == 3.0
    assert _stages(out) == []


@pytest.mark.parametrize(("product", "what"), [("in.zarr", "is the input"), ("d", "contains the input"),
                                               ("in.zarr/sub.zarr", "is inside the input")])
def test_a_product_overlapping_an_input_is_refused(tmp_path, product, what):
    (tmp_path / "d").mkdir()
    inp = tmp_path / ("d/in.zarr" if product == "d" else "in.zarr")
    inp.mkdir()
    with pytest.raises(ValueError, match=what), OutputSet([tmp_path / product], overwrite=True, inputs=[inp]):
        pass
    assert inp.is_dir()


def test_a_product_that_appears_meanwhile_is_kept_and_nothing_is_placed(tmp_path):
    finals = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    with pytest.raises(FileExistsError, match="appeared while this run was writing"), OutputSet(finals) as outs:
        for f in finals:
            outs.path(f).mkdir()
            (outs.path(f) / "zarr.json").write_text("{}")
        finals[1].mkdir()  # another run's product
        (finals[1] / "theirs").write_text("theirs")
        outs.commit()
    assert not finals[0].exists()  # all or nothing: a.zarr was moved back and removed with the stage
    assert (finals[1] / "theirs").read_text() == "theirs"
    assert _stages(tmp_path) == []
    # with overwrite, the run's products replace it
    with OutputSet(finals, overwrite=True) as outs:
        for f in finals:
            outs.path(f).mkdir()
        outs.commit()
    assert finals[0].is_dir() and not (finals[1] / "theirs").exists()


def test_two_concurrent_commits_one_wins(tmp_path):
    final = tmp_path / "p.zarr"
    one, two = OutputSet([final]), OutputSet([final])
    with one, two:
        one.path(final).mkdir()
        (one.path(final) / "who").write_text("one")
        two.path(final).mkdir()
        (two.path(final) / "who").write_text("two")
        one.commit()
        with pytest.raises(FileExistsError, match="appeared"):
            two.commit()
    assert (final / "who").read_text() == "one"


@pytest.mark.parametrize("fallback", [False, True])
def test_rename_noreplace(tmp_path, monkeypatch, fallback):
    if fallback:
        monkeypatch.setattr(_outputs.sys, "platform", "other")
    for kind in ("file", "dir"):
        src, dst = tmp_path / f"src-{kind}", tmp_path / f"dst-{kind}"
        src.write_text("new") if kind == "file" else src.mkdir()
        if kind == "file":
            dst.write_text("old")
        else:
            dst.mkdir()
            (dst / "x").write_text("old")
        with pytest.raises(FileExistsError):
            rename_noreplace(src, dst)
        assert src.exists()
        assert (dst.read_text() if kind == "file" else (dst / "x").read_text()) == "old"
        new = tmp_path / f"free-{kind}"
        rename_noreplace(src, new)
        assert new.exists() and not src.exists()


@pytest.mark.parametrize("scheduler", ["sync", "threads", "distributed"])
def test_a_failing_run_leaves_nothing(tmp_path, scheduler, request):
    def boom(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1):
            raise RuntimeError("injected failure")
        return block

    bad = _ds(1.0)
    bad["data"] = bad["data"].copy(data=bad["data"].data.map_blocks(boom, dtype="f4"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    if scheduler == "distributed":
        request.getfixturevalue("client")
    with dask.config.set(scheduler=None if scheduler == "distributed" else scheduler):
        with pytest.raises(RuntimeError, match="injected"):
            save_products({"rate": _ds(1.0), "bad": bad}, out)
        with pytest.raises(RuntimeError, match="injected"):
            save_dataset(bad, out / "alone.zarr")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.fixture
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc, \
            Client(lc) as c:
        yield c


def test_an_unfinished_store_cannot_be_opened(tmp_path):
    store = tmp_path / "s.zarr"
    _ds(1.0).to_zarr(store, zarr_format=3, consolidated=False)
    mark_incomplete(store)
    with pytest.raises(FileNotFoundError):
        xr.open_zarr(store, consolidated=False)


def _fake_stage(folder, pid, host=None, started=None, marker=True):
    stage = folder / f"{STAGE_PREFIX}h-{pid}-abcd"
    (stage / "rate.zarr").mkdir(parents=True)
    if marker:
        (stage / _outputs.MARKER).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                         "started": started}))
    return stage


def test_stale_partials_of_dead_runs_are_removed_and_nothing_else(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    gone = _fake_stage(tmp_path / "a", dead_pid)
    alive = _fake_stage(tmp_path / "b", os.getppid(), started=_outputs._process_start(os.getppid()))
    other_host = _fake_stage(tmp_path / "c", dead_pid, host="elsewhere")
    unmarked = _fake_stage(tmp_path / "d", dead_pid, marker=False)
    reused = _fake_stage(tmp_path / "e", os.getppid(), started=1.0)  # the PID now belongs to another process
    for stage in (gone, alive, other_host, unmarked, reused):
        remove_stale_partials(stage.parent)
    assert not gone.exists() and not reused.exists()
    assert alive.exists() and other_host.exists() and unmarked.exists()
    assert "left by a daskcal run that was killed" in caplog.text
    # a new run in the folder removes them too
    gone = _fake_stage(tmp_path / "a", dead_pid)
    with atomic_path(tmp_path / "a" / "new.txt") as p:
        p.write_text("x")
    assert not gone.exists() and (tmp_path / "a" / "new.txt").read_text() == "x"


def test_a_writer_never_recreates_a_removed_store(tmp_path):
    from daskcal.io._zarr_read import ZarrSource
    from daskcal.io._zarr_write import chunk_writer

    store = tmp_path / "s.zarr"
    xr.Dataset({"data": (("y", "x"), np.zeros((4, 4), "f4"))}).to_zarr(
        store, zarr_format=3, consolidated=False, encoding={"data": {"chunks": (2, 2)}})
    writer = chunk_writer(ZarrSource.at(store, "data"))
    assert writer is not None
    import shutil

    shutil.rmtree(store)
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        writer.write((0, 0), np.ones((2, 2), "f4"))
    assert not store.exists()


def test_the_output_folder_is_created_and_removed_again_on_failure(tmp_path):
    out = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError), OutputSet([out / "p.zarr"]):
        assert out.is_dir()
        raise RuntimeError
    assert not (tmp_path / "new").exists()


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"), OutputSet([tmp_path / "f" / "p.zarr"]):
        pass


def test_scratch_folders_of_killed_runs_are_removed_by_the_next(tmp_path):
    script = ("import sys; from daskcal.io._atomic import temporary_directory; "
              "d = temporary_directory(sys.argv[1], prefix='daskcal-outliers-'); print(d.name)")
    left = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    scratch = left.stdout.strip()
    assert os.path.isdir(scratch)  # the process ended without cleaning up, as a killed one would
    from daskcal.io._atomic import temporary_directory

    mine = temporary_directory(tmp_path)
    assert not os.path.exists(scratch) and os.path.isdir(mine.name)
    mine.cleanup()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Running on a single-machine scheduler:UserWarning")  # older dask says so
def test_the_callers_scheduler_wins_over_a_default_client(tmp_path, client):
    """With a client as default, ``dask.config.set(scheduler="sync")`` still writes in this thread."""
    import threading

    threads = set()

    def note(block):
        threads.add(threading.current_thread().name)
        return block

    ds = _ds(1.0)
    ds["data"] = ds["data"].copy(data=ds["data"].data.map_blocks(note, dtype="f4"))
    with dask.config.set(scheduler="sync"):
        save_products({"rate": ds}, tmp_path / "a")
    assert threads == {threading.current_thread().name}


@pytest.mark.parametrize("progress", [False, True])
def test_workers_paused_for_good_stop_the_run_with_a_setting_to_change(tmp_path, progress, capsys):
    """Workers whose memory stays over the pause fraction never run the tasks: the run fails, naming
    --memory-limit, instead of waiting forever (a 1 GiB worker did with the outlier step)."""
    import psutil
    from distributed import Client, LocalCluster

    from daskcal.io._atomic import PAUSED_TIMEOUT_CONFIG, WorkersPausedError

    rss = psutil.Process().memory_info().rss  # in-process workers measure this process: over 80% of the limit
    with dask.config.set({PAUSED_TIMEOUT_CONFIG: 1.0}), \
            LocalCluster(n_workers=1, processes=False, memory_limit=int(rss / 0.9), dashboard_address=None) as lc, \
            Client(lc) as c:
        deadline = time.monotonic() + 20
        while not all(w.get("status") == "paused" for w in c.scheduler_info()["workers"].values()):
            assert time.monotonic() < deadline, "the worker never paused"
            time.sleep(0.1)
        with pytest.raises(WorkersPausedError, match="raise --memory-limit"):
            save_products({"rate": _ds(1.0)}, tmp_path / "out", progress=progress)
    assert _stages(tmp_path / "out") == [] if (tmp_path / "out").exists() else True


def test_a_stall_is_a_paused_worker_while_no_task_runs():
    from daskcal.io._atomic import _stalled

    def worker(status, executing):
        return {"status": status, "metrics": {"task_counts": {"executing": executing} if executing else {}}}

    assert _stalled([worker("paused", 0), worker("running", 0)])  # the other waits on the paused one
    assert _stalled([worker("paused", 0), worker("paused", 0)])
    assert not _stalled([worker("paused", 0), worker("running", 1)])  # work goes on
    assert not _stalled([worker("running", 0), worker("running", 0)])
    assert not _stalled([])


def test_overwrite_swaps_the_product_in_one_step(tmp_path, monkeypatch):
    from daskcal.io import _outputs

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "x").write_text("a")
    b.write_text("b")
    assert _outputs.rename_exchange(a, b)  # a directory and a file swap places
    assert a.read_text() == "b" and (b / "x").read_text() == "a"
    final = tmp_path / "m.zarr"
    final.mkdir()
    (final / "old").write_text("old")
    swaps = []
    real = _outputs.rename_exchange
    monkeypatch.setattr(_outputs, "rename_exchange", lambda x, y: swaps.append((x, y)) or real(x, y))
    with _outputs.OutputSet([final], overwrite=True) as outputs:
        staged = outputs.path(final)
        staged.mkdir()
        (staged / "new").write_text("new")
        outputs.commit()
    assert len(swaps) == 1 and sorted(p.name for p in final.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".daskcal")] == []
