"""Bounded memory of resample: tile sizes from a memory budget or the workers' limit, tasks that
cannot fit refused, and a threaded save that holds tiles, not the mosaic."""

from __future__ import annotations

import collections

import dask
import numpy as np
import pytest
from dask.callbacks import Callback
from dask.sizeof import sizeof

import daskcal
from daskcal.image import _driz, _grid, _resample
from daskcal.image._grid import WorkerMemory, tile_budget, tile_side, tile_task_bytes

MiB, GiB = 2**20, 2**30


@pytest.mark.parametrize(
    ("workers", "psr", "side"),
    [
        (None, 1.0, 1024),  # the default budget, 320 MiB
        (None, 0.2, 1024),
        (WorkerMemory(GiB, 1), 0.2, 768),  # the 1 GiB worker of the issue: 205 MiB per task
        (WorkerMemory(GiB, 1), 1.0, 768),
        (WorkerMemory(GiB, 2), 0.1, 512),  # 102 MiB per task
        (WorkerMemory(GiB, 4), 1.0, 256),  # 51 MiB per task: the smallest tile
        (WorkerMemory(16 * GiB, 2), 1.0, 1024),  # big workers: the configured budget caps the tile
    ],
)
def test_tile_side_from_worker_memory(workers, psr, side):
    budget = tile_budget(workers)
    expected_budget = 320 * MiB if workers is None else min(320 * MiB, int(workers.limit / workers.threads * 0.2))
    assert budget == expected_budget
    assert tile_side(psr, budget) == side
    # the largest multiple of 256 that fits (or 256)
    assert side == 256 or tile_task_bytes((side, side), psr) <= budget
    assert tile_task_bytes((side + 256, side + 256), psr) > budget


def test_tile_budget_from_config():
    with dask.config.set({"daskcal.resample.tile-memory": "1 GiB"}):
        assert tile_budget() == GiB
        # 1792^2 px * (160 + 46) B + (1792 + 16)^2 px * 52 B = 831 MB fits, 2048 needs 1085 MB
        assert tile_side(1.0, tile_budget()) == 1792
        assert tile_budget(WorkerMemory(GiB, 1)) == int(GiB * 0.2)


class _FakeClient:
    def __init__(self, workers):
        self.workers = workers

    def scheduler_info(self, n_workers=-1):
        return {"workers": self.workers}


def test_worker_memory_takes_the_tightest_worker():
    client = _FakeClient({
        "a": {"memory_limit": 4 * GiB, "nthreads": 2},
        "b": {"memory_limit": 3 * GiB, "nthreads": 2},  # least per thread
        "c": {"memory_limit": 8 * GiB, "nthreads": 1},
    })
    assert _grid.worker_memory(client) == WorkerMemory(3 * GiB, 2)
    assert _grid.worker_memory(_FakeClient({"a": {"memory_limit": 0, "nthreads": 1}})) is None  # no limit
    assert _grid.worker_memory(_FakeClient({})) is None


@pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning", "ignore::ResourceWarning")
def test_tiles_follow_the_active_client(sim6):
    from distributed import Client, LocalCluster

    assert _grid.worker_memory() is None
    # an in-process worker measures this whole pytest process, which may be past 1 GiB's pause fraction
    # (seen in CI: 868 MB RSS, the worker paused and the test waited forever): the limit sizes tiles only
    no_pause = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause", "terminate")}
    with dask.config.set(no_pause), \
            LocalCluster(n_workers=1, threads_per_worker=2, memory_limit="1GiB", processes=False,
                         dashboard_address=None) as lc, Client(lc):
        assert _grid.worker_memory() == WorkerMemory(GiB, 2)
        mosaic = daskcal.resample(sim6.images, pixel_scale_ratio=0.1)
    assert min(mosaic.data.shape) > 512
    assert mosaic.attrs["tile_shape"] == [512, 512]  # 0.2 * 512 MiB per thread
    with dask.config.set({"daskcal.resample.tiles-per-thread": 0}):  # tiles from memory only
        assert daskcal.resample(sim6.images, pixel_scale_ratio=0.1).attrs["tile_shape"] == [1024, 1024]


def test_a_task_that_cannot_fit_names_the_settings(sim6, sim6_wcs, monkeypatch):
    monkeypatch.setattr(_grid, "worker_memory", lambda client=None: WorkerMemory(4 * MiB, 1))
    daskcal.resample(sim6.images, output_wcs=sim6_wcs, tile_shape=(64, 64))  # ~1.1 MB per task: fits in 2 MiB
    with pytest.raises(ValueError, match=r"lower tile_shape \(--tile-shape\).*raise the workers' memory limit "
                                         r"\(--memory-limit\)"):
        daskcal.resample(sim6.images, output_wcs=sim6_wcs, tile_shape=(160, 160))
    with pytest.raises(ValueError, match="tile of 256x256 px"):  # even the smallest default tile
        daskcal.resample(sim6.images, pixel_scale_ratio=0.2)
    # input chunks are read whole by some worker: one too big for it is refused too
    monkeypatch.setattr(_grid, "worker_memory", lambda client=None: WorkerMemory(MiB // 2, 1))
    chunked = [ds.chunk() for ds in sim6.images]
    with pytest.raises(ValueError, match=r"input 0 .*one Dask chunk of its 6 arrays.*open_images\(chunks=\.\.\.\)"):
        daskcal.resample(chunked, output_wcs=sim6_wcs, tile_shape=(16, 16))


def _window_bytes(v):
    if isinstance(v, (tuple, list)):
        return sum(_window_bytes(x) for x in v)
    if isinstance(v, dict):
        return sum(_window_bytes(x) for x in v.values())
    if hasattr(v, "wht") and hasattr(v, "var"):  # a drizzled window or its piece of a tile
        return sum(a.nbytes for a in (v.wht, v.img, v.err, v.ctx, v.dq, *v.var.values()) if a is not None)
    return sizeof(v)


class _Held(Callback):
    """Largest total size of the results the threaded scheduler holds at once, except ``exclude``'s."""

    def __init__(self, exclude):
        super().__init__()
        self.exclude, self.peak, self.at_peak = exclude, 0, {}

    def _posttask(self, key, result, dsk, state, id):
        by = collections.Counter()
        for k, v in state["cache"].items():
            if k not in self.exclude:
                by[k[0] if isinstance(k, tuple) else k] += _window_bytes(v)
        if sum(by.values()) > self.peak:
            self.peak, self.at_peak = sum(by.values()), dict(by)


def test_threaded_save_holds_tiles_not_the_mosaic(tmp_path):
    """On dask's threaded scheduler, ``save(resample(...))`` holds a few tiles at a time, whatever the mosaic.

    Before, each input block's drizzled window was cut into pieces per tile and the
    pieces waited for every other input's blocks of their tiles: the scheduler held
    about 4x the mosaic's planes (every input's footprint drizzled at the output
    scale). Now each tile task drizzles what it needs itself; besides the inputs'
    own chunks (excluded here), only finished tiles on their way to Zarr are held.
    """
    sim = daskcal.simulate_images(n=6, shape=(96, 96), seed=4, n_stars=10)
    images = [ds.chunk({"y": 40, "x": 40}) for ds in sim.images]  # regions span several input chunks
    inputs = {k for ds in images for v in ds.data_vars.values() for k in dask.core.flatten(v.data.__dask_keys__())}
    tile = (48, 48)
    mosaic = daskcal.resample(images, pixel_scale_ratio=0.25, tile_shape=tile)
    planes = sum(v.nbytes for v in mosaic.data_vars.values())
    tile_planes = planes * tile[0] * tile[1] // (mosaic.sizes["y"] * mosaic.sizes["x"])
    assert mosaic.data.data.npartitions >= 40
    with _Held(inputs) as held, dask.config.set(scheduler="threads", num_workers=2):
        daskcal.save(mosaic, tmp_path / "m.zarr")
    # per thread, one tile's partial sums (float64, the whole tile: later inputs are added in place) in
    # progress, plus finished tiles on their way to Zarr
    sums = _driz.TileSums((0, tile[0], 0, tile[1]), 1, _resample.drizzle_spec(_resample.ResampleParams(), 0.25)).nbytes
    assert held.peak <= 2 * sums + 2 * tile_planes, (held.peak, sums, tile_planes, planes, held.at_peak)
    # the same mosaic as from unchunked inputs
    import xarray as xr

    back = xr.open_zarr(tmp_path / "m.zarr", consolidated=False)
    whole = daskcal.resample(sim.images, pixel_scale_ratio=0.25, tile_shape=tile).compute(scheduler="sync")
    for name in whole.data_vars:
        np.testing.assert_array_equal(back[name].values, whole[name].values, err_msg=name)


@pytest.mark.parametrize(
    ("side", "shape", "threads", "split"),
    [
        (1024, (3072, 3072), 2, 512),  # 9 tiles of 1024 for 2 threads: 36 of 512
        (1024, (3072, 3072), 1, 768),  # 16 tiles of 768 are 16 for the one thread
        (1024, (3072, 2000), 1, 512),  # 4 x 3 tiles of 768 are too few
        (1024, (40000, 38000), 64, 1024),  # a large mosaic: 1443 tiles already
        (1024, (3072, 3072), None, 1024),  # threads unknown (a client without workers yet)
        (1024, (100, 100), 8, 512),  # never below 512 px
        (256, (3072, 3072), 2, 256),  # a side that memory allows is kept
        (1792, (8192, 8192), 2, 1536),  # 6 x 6 tiles of 1536 px >= 32, 5 x 5 of 1792 are not
    ],
)
def test_small_mosaics_get_tiles_for_every_thread(side, shape, threads, split):
    assert _grid.split_tile_side(side, shape, threads) == split
    if split != side:  # the largest side in 256 px steps with 16 tiles per thread, unless at 512
        tiles = lambda s: -(-shape[0] // s) * -(-shape[1] // s)
        assert split == 512 or tiles(split) >= 16 * threads > tiles(split + 256)
    with dask.config.set({"daskcal.resample.tiles-per-thread": 0}):
        assert _grid.split_tile_side(side, shape, threads) == side
    with dask.config.set({"daskcal.resample.tiles-per-thread": 1}):
        assert _grid.split_tile_side(1024, (3072, 3072), 2) == 1024


def test_task_threads_of_each_scheduler():
    from dask.system import CPU_COUNT

    assert _grid.task_threads(_FakeClient({"a": {"nthreads": 2}, "b": {"nthreads": 3}})) == 5
    assert _grid.task_threads(_FakeClient({})) is None  # no workers yet: unknown
    assert _grid.task_threads() == CPU_COUNT  # Dask's threaded scheduler
    with dask.config.set(num_workers=3):
        assert _grid.task_threads() == 3
    with dask.config.set(scheduler="sync"):
        assert _grid.task_threads() == 1


@pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning", "ignore::ResourceWarning")
@pytest.mark.parametrize("scheduler", ["sync", "threads", "distributed"])
def test_split_tiles_give_the_same_mosaic(sim6, scheduler):
    """sim6 at pixel_scale_ratio 0.1 is 1354 x 1465 px: 2 x 2 tiles of 1024 px by memory, 3 x 3 of 512 px
    for 1 or 2 threads, and the same mosaic."""
    from distributed import Client, LocalCluster

    with dask.config.set({"daskcal.resample.tiles-per-thread": 0}):
        whole = daskcal.resample(sim6.images, pixel_scale_ratio=0.1)
    assert whole.attrs["tile_shape"] == [1024, 1024]
    ref = whole.compute(scheduler="sync")
    if scheduler == "distributed":
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as lc, \
                Client(lc):
            assert _grid.task_threads() == 2
            with dask.config.set(scheduler="sync"):  # a scheduler chosen over the client runs the graph
                assert _grid.task_threads() == 1
            split = daskcal.resample(sim6.images, pixel_scale_ratio=0.1)
            got = split.compute()
    else:
        with dask.config.set(num_workers=2, scheduler=scheduler):
            split = daskcal.resample(sim6.images, pixel_scale_ratio=0.1)
            got = split.compute()
    assert split.attrs["tile_shape"] == [512, 512]
    assert split.data.chunks != whole.data.chunks
    for name in ("data", "wht", "var_rnoise", "err"):
        a, b = got[name].values, ref[name].values
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        scale = np.nanmax(np.abs(b))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * scale, err_msg=name)
    np.testing.assert_array_equal(got.con.values, ref.con.values)
