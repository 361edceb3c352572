"""The resample engine's graph: sparse mosaics (tiles no input reaches are not computed nor written),
the tree of pairwise merges per tile, and keyword-only public arguments."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

import daskcal
from daskcal.io._zarr_read import SPARSE_ATTR, WRITTEN_ATTR, ChunkError, ZarrSource, check_store


@pytest.fixture(scope="module")
def sim():
    return daskcal.simulate_images(n=3, shape=(60, 60), seed=11)


def _wide_grid(sim, factor=4):
    """The simulated exposures' grid made ``factor`` times wider and taller, the exposures in its corner."""
    ny, nx = daskcal.output_wcs(sim.images).array_shape
    return daskcal.output_wcs(sim.images, crpix=(nx / 2 + 1, ny / 2 + 1), output_shape=(nx * factor, ny * factor))


def test_tiles_no_input_reaches_are_not_written(sim, tmp_path):
    grid = _wide_grid(sim)
    mosaic = daskcal.resample(sim.images, output_wcs=grid, tile_shape=(40, 40))
    ny, nx = grid.array_shape
    nty, ntx = -(-ny // 40), -(-nx // 40)
    expected = daskcal.resample(sim.images, output_wcs=grid, tile_shape=(ny, nx)).compute(scheduler="sync")
    written = {tuple(t) for t in mosaic["data"].attrs[WRITTEN_ATTR]}
    assert 0 < len(written) < nty * ntx
    # exactly the tiles where some input has weight (and its kernel margin) are written
    wht = expected["wht"].values
    for iy in range(nty):
        for ix in range(ntx):
            if wht[iy * 40:(iy + 1) * 40, ix * 40:(ix + 1) * 40].any():
                assert (iy, ix) in written
    out = daskcal.save(mosaic, tmp_path / "m.zarr")
    files = {p.name for p in (out / "data" / "c").rglob("*") if p.is_file()}
    rows = {p.parent.name + "/" + p.name for p in (out / "data" / "c").rglob("*") if p.is_file()}
    assert len(rows) == len(written), (len(rows), len(written), files)
    check_store(out, ["data", "wht", "con", "err"])
    for name in ("data", "wht", "con", "var_rnoise", "err"):
        got = ZarrSource.at(out, name).read((slice(None),) * expected[name].ndim)
        np.testing.assert_array_equal(got, expected[name].values, err_msg=name)
    # what xarray (zarr's fill values) reads is the same mosaic
    back = xr.open_zarr(out, consolidated=False, mask_and_scale=False)
    np.testing.assert_array_equal(back["data"].values, expected["data"].values)
    np.testing.assert_array_equal(back["wht"].values, expected["wht"].values)
    assert back["data"].attrs[SPARSE_ATTR] is True


def test_a_missing_written_tile_is_damage(sim, tmp_path):
    grid = _wide_grid(sim, factor=2)
    mosaic = daskcal.resample(sim.images, output_wcs=grid, tile_shape=(40, 40))
    out = daskcal.save(mosaic, tmp_path / "m.zarr")
    iy, ix = mosaic["wht"].attrs[WRITTEN_ATTR][0]
    (out / "wht" / "c" / str(iy) / str(ix)).unlink()
    daskcal.io._zarr_read._stored_grid.cache_clear()
    daskcal.io._zarr_read._chunk_files.cache_clear()
    with pytest.raises(ChunkError, match=r"'wht'.*chunk"):
        check_store(out, ["wht"])
    with pytest.raises(ChunkError, match="wht"):
        ZarrSource.at(out, "wht").read((slice(iy * 40, iy * 40 + 40), slice(ix * 40, ix * 40 + 40)))


@pytest.mark.parametrize("chain", [8, 2, 1])
def test_each_tile_is_chains_of_inputs_merged_pairwise(sim, monkeypatch, chain):
    """A tile reached by n inputs: n leaf tasks, each reading one input and taking the sums of the one
    before it in its chain (chains of ``CHAIN`` inputs), the chains merged pairwise, one finalize; the
    mosaic does not depend on how the inputs are grouped."""
    from daskcal.image import _resample

    monkeypatch.setattr(_resample, "CHAIN", chain)
    mosaic = daskcal.resample(sim.images, tile_shape=(400, 400))  # one tile
    graph = dict(mosaic["data"].data.__dask_graph__())
    deps = mosaic["data"].data.dask.get_all_dependencies()
    leaves = [k for k in graph if isinstance(k, str) and "-leaf-" in k]
    merges = [k for k in graph if isinstance(k, str) and "-merge-" in k]
    nchains = -(-3 // chain)
    assert len(leaves) == 3 and len(merges) == nchains - 1
    for k in merges:
        assert len([d for d in deps[k] if "-leaf-" in str(d) or "-merge-" in str(d)]) == 2
    for k in leaves:  # a leaf reads one input, and takes at most the sums of the leaf before it
        assert len([d for d in deps[k] if "-leaf-" in str(d)]) <= 1
    monkeypatch.setattr(_resample, "CHAIN", 8)
    one_chain = daskcal.resample(sim.images, tile_shape=(400, 400)).compute(scheduler="sync")
    got = mosaic.compute(scheduler="sync")
    for name in got.data_vars:
        np.testing.assert_array_equal(got[name].values, one_chain[name].values, err_msg=name)


def test_misspelled_arguments_are_errors(sim):
    grid = daskcal.output_wcs(sim.images)
    with pytest.raises(TypeError, match="pixel_scal"):
        daskcal.resample(sim.images, output_wcs=grid, pixel_scal=0.1)
    with pytest.raises(TypeError):
        daskcal.resample(sim.images, grid)  # the output WCS is keyword-only


@pytest.mark.parametrize("kernel", ["square", "point"])
def test_results_do_not_depend_on_blocks_or_tiles(kernel):
    """Blocks (daskcal.resample.block-memory, block_shape) and tiles change how an input is cut, not the
    mosaic: the one-pass kernel's float64 sums are carried whole into the tiles."""
    import dask

    sim = daskcal.simulate_images(n=4, shape=(96, 96), seed=5)
    grid = daskcal.output_wcs(sim.images)
    kw = dict(output_wcs=grid, kernel=kernel, pixfrac=0.8)
    whole = daskcal.resample(sim.images, tile_shape=grid.array_shape, **kw).compute(scheduler="sync")
    with dask.config.set({"daskcal.resample.block-memory": "2 MiB"}):
        small = daskcal.resample(sim.images, tile_shape=(50, 60), **kw)
    cuts = [small, daskcal.resample(sim.images, tile_shape=(17, 23), block_shape=16, **kw)]
    assert small.attrs["tile_shape"] == [50, 60]
    for out in cuts:
        out = out.compute(scheduler="sync")
        for name in whole.data_vars:
            np.testing.assert_array_equal(out[name].values, whole[name].values, err_msg=name)


def test_without_a_fill_value_encoding_every_tile_is_written(sim, tmp_path, monkeypatch):
    """With an xarray whose to_zarr takes no fill_value (2025.1, the lower bound), the mosaic is not sparse:
    every chunk is written and reads back equal."""
    from daskcal.image import _resample

    monkeypatch.setattr(_resample, "_zarr_fill_value_encoding", lambda: False)
    grid = _wide_grid(sim, factor=2)
    mosaic = daskcal.resample(sim.images, output_wcs=grid, tile_shape=(40, 40))
    assert WRITTEN_ATTR not in mosaic["data"].attrs and "fill_value" not in mosaic["data"].encoding
    out = daskcal.save(mosaic, tmp_path / "m.zarr")
    ny, nx = grid.array_shape
    nfiles = sum(1 for p in (out / "data" / "c").rglob("*") if p.is_file())
    assert nfiles == -(-ny // 40) * -(-nx // 40)
    check_store(out, ["data", "wht"])
    expected = mosaic.compute(scheduler="sync")
    np.testing.assert_array_equal(ZarrSource.at(out, "wht").read((slice(None), slice(None))), expected["wht"].values)


def test_graph_layers_do_not_grow_with_the_tiles(sim):
    """A mosaic's graph has as many layers however many tiles it has (its tiles' tasks are one layer, each
    plane one more): dask culls a graph layer by layer, each pass going over every key needed so far, which
    made a 38016x35662 mosaic of 24,759 layers spend 14 s culling before its first task. Reached, merged and
    empty tiles alike; the results are those of one tile."""
    import dask

    grid = _wide_grid(sim, factor=2)
    one = daskcal.resample(sim.images, output_wcs=grid, tile_shape=grid.array_shape)
    with dask.config.set({"daskcal.resample.block-memory": "2 MiB"}):
        many = daskcal.resample(sim.images, output_wcs=grid, tile_shape=(20, 24))
    assert many["data"].data.npartitions >= 30
    assert np.isnan(many["data"].values).any()  # tiles no input reaches are among them
    assert len(many.__dask_graph__().layers) == len(one.__dask_graph__().layers)
    expected = one.compute(scheduler="sync")
    got = many.compute(scheduler="sync")
    for name in expected.data_vars:
        np.testing.assert_array_equal(got[name].values, expected[name].values, err_msg=name)


def _parses(monkeypatch) -> list:
    """The WCS texts the calling thread deserialises (not the tasks, which dask's threaded scheduler runs in
    threads of its own), as if wcs_from_text's cache had already let every one go (more inputs than it holds)."""
    import threading

    from daskcal.image import _dataset

    texts: list = []
    real = _dataset.wcs_from_text.__wrapped__

    def parse(text):
        if threading.current_thread() is threading.main_thread():
            texts.append(text)
        return real(text)

    monkeypatch.setattr(_dataset, "wcs_from_text", parse)
    return texts


def test_a_step_parses_each_wcs_once_however_many_inputs(sim, monkeypatch):
    """resample goes over its inputs' WCSs twice (its inputs, the output grid): each is deserialised once in the
    call (they were all parsed again when there were more than the 256 that wcs_from_text caches: 400 exposures
    took 17 s to build), and none is held after it."""
    from daskcal.image import _dataset

    texts = _parses(monkeypatch)
    daskcal.resample(sim.images)
    assert sorted(texts) == sorted(ds.attrs["wcs_asdf"] for ds in sim.images)
    assert _dataset._PINNED.get() is None
    texts.clear()
    daskcal.resample(sim.images)  # a new call parses again (as the cache would, were they evicted)
    assert len(texts) == len(sim.images)


def test_image3_parses_each_wcs_once_across_its_steps(sim, monkeypatch):
    import dask

    texts = _parses(monkeypatch)
    with dask.config.set(scheduler="threads"):
        daskcal.image3(sim.images, tweakreg=False)
    assert sorted(texts) == sorted(ds.attrs["wcs_asdf"] for ds in sim.images)


def test_tasks_map_pixels_with_the_program_compiled_once(sim, scheduler, monkeypatch):
    """The tasks get each input's pixel map as the program the call compiled (picklable, a few KB), not as two
    WCS texts to parse: no task deserialises a WCS. Where the compiler does not know a model, the tasks map with
    gwcs from the texts, and the mosaic is the same to the ~1e-8 px the two maps differ by."""
    import pickle

    from daskcal.image import _dataset, _driz, _pixmap
    from daskcal.image._pixmap import PixelMapProgram

    mosaic = daskcal.resample(sim.images, tile_shape=(41, 37))
    real = _dataset.wcs_from_text
    in_tasks: list = []

    def parse(text):
        in_tasks.append(text)
        return real(text)

    monkeypatch.setattr(_dataset, "wcs_from_text", parse)
    with scheduler():
        got = mosaic.compute()
    assert in_tasks == []
    monkeypatch.setattr(_dataset, "wcs_from_text", real)

    grid = daskcal.output_wcs(sim.images)
    program = _pixmap.compile_pixel_map(_dataset.get_wcs(sim.images[0]), grid)
    again = pickle.loads(pickle.dumps(program))
    assert isinstance(again, PixelMapProgram) and len(pickle.dumps(program)) < 20_000
    np.testing.assert_array_equal(np.stack(again(np.arange(5.0), np.arange(5.0))),
                                  np.stack(program(np.arange(5.0), np.arange(5.0))))

    # the tasks' source as for a model the compiler does not know: the WCS texts (the planning still compiled)
    monkeypatch.setattr(_driz, "pixmap_source", lambda wcs_in, wcs_out, text_in, text_out: (text_in, text_out))
    mosaic = daskcal.resample(sim.images, tile_shape=(41, 37))
    monkeypatch.setattr(_dataset, "wcs_from_text", parse)
    with scheduler():
        ref = mosaic.compute()
    assert len(in_tasks) > 0  # gwcs, in the tasks
    covered = ref.wht.values > 0
    np.testing.assert_array_equal(got.wht.values > 0, covered)
    np.testing.assert_allclose(got.data.values[covered], ref.data.values[covered], rtol=1e-6, atol=0)
    np.testing.assert_allclose(got.wht.values, ref.wht.values, rtol=0, atol=1e-6 * np.median(ref.wht.values[covered]))
    np.testing.assert_array_equal(got.con.values, ref.con.values)


class _Priorities:
    """Scheduler plugin: the priority the scheduler gives each task it receives, by key."""

    name = "daskcal-test-priorities"

    def __init__(self):
        self.seen, self.scheduler = {}, None

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        ts = self.scheduler.tasks.get(key)
        if ts is not None:
            self.seen[str(key)] = ts.priority


def test_tiles_priorities_reach_the_distributed_scheduler(tmp_path):
    """save() on a client keeps resample's priority annotations (array optimisation's low-level fusion
    drops them): a tile's later steps rank above its first ones, and earlier tiles above later ones."""
    distributed = pytest.importorskip("distributed")
    from distributed.diagnostics.plugin import SchedulerPlugin

    rec = type("Rec", (_Priorities, SchedulerPlugin), {})()
    wide = daskcal.simulate_images(n=3, shape=(60, 60), seed=11, dither=25.0)  # tiles reached by 1, 2 or 3 inputs
    mosaic = daskcal.resample(wide.images, pixel_scale_ratio=0.5, tile_shape=(32, 32))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        client.register_plugin(rec)
        daskcal.save(mosaic, tmp_path / "m.zarr")
        seen = client.run_on_scheduler(lambda dask_scheduler: dict(dask_scheduler.plugins[_Priorities.name].seen))
    leaves = {k: p for k, p in seen.items() if "-leaf-" in k}
    assert leaves, sorted(seen)[:10]
    user = {k: -p[0] for k, p in leaves.items()}  # the scheduler stores minus the annotated priority

    def tile_of(k):
        return int(k.split("-leaf-")[0].rsplit("-", 1)[1])

    tiles = sorted({tile_of(k) for k in user})
    assert len(tiles) >= 2
    first = {t: max(p for k, p in user.items() if tile_of(k) == t) for t in tiles}
    assert all(first[a] > first[b] for a, b in zip(tiles, tiles[1:])), first
    for t in tiles:  # within a chain: the later inputs first
        chain = [p for k, p in sorted(user.items(), key=lambda kv: int(kv[0].rsplit("-", 1)[1])) if tile_of(k) == t]
        assert chain == sorted(chain), (t, chain)
    # every step of a tile (its leaves, merges and planes) above every step of the tiles after it, however many
    # inputs reach each (a tile reached by fewer inputs had ranked above earlier tiles reached by more)
    steps = {k: -p[0] for k, p in seen.items() if re.search(r"^resample-\w+-\d+-\d+-(leaf|merge|chain|tile)", k)}
    tile_steps: dict = {}
    for k, p in steps.items():
        tile_steps.setdefault(int(k.split("-")[3]), []).append(p)
    order = sorted(tile_steps)
    counts = {t: sum(1 for k in steps if int(k.split("-")[3]) == t and "-leaf-" in k) for t in order}
    assert len(set(counts.values())) > 1, counts  # tiles reached by different numbers of inputs
    assert all(min(tile_steps[a]) > max(tile_steps[b]) for a, b in zip(order, order[1:])), \
        {t: (min(v), max(v), counts[t]) for t, v in tile_steps.items()}
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "m.zarr").load(), mosaic.load())


@pytest.mark.parametrize("chain", [8, 1])
def test_leaves_read_their_regions_of_zarr_inputs(sim, tmp_path, monkeypatch, chain):
    """Inputs daskcal opened from Zarr are read by the tasks that drizzle them, each its region (no input chunk
    task in the graph): a tile's chain of inputs is one task, which gives the tile's planes when it is the tile's
    only chain (``chain`` 8) or its sums to merge (``chain`` 1, one tile: a chain per input). The mosaic is the
    one the same inputs in memory give (whose chunks are cut to a tile's extent, one leaf task per input)."""
    from daskcal.image import _resample

    monkeypatch.setattr(_resample, "CHAIN", chain)
    paths = []
    for k, ds in enumerate(sim.images):
        paths.append(tmp_path / f"in{k}.zarr")
        daskcal.save(ds, paths[-1])
    images = daskcal.open_images(paths)
    tiles = (32, 32) if chain == 8 else (400, 400)
    mosaic = daskcal.resample(images, pixel_scale_ratio=0.5, tile_shape=tiles)
    keys = [str(k) for k in dict(mosaic.__dask_graph__())]
    assert not [k for k in keys if "zarr-read" in k or "-leaf-" in k]
    chains, merges = [k for k in keys if "-chain-" in k], [k for k in keys if "-merge-" in k]
    if chain == 8:
        assert not chains and not merges and [k for k in keys if k.endswith("-tile")]
    else:
        assert len(chains) == len(sim.images) and len(merges) == len(sim.images) - 1
    in_memory = [ds.load().chunk({"y": 48, "x": 48}) for ds in daskcal.open_images(paths)]
    ref = daskcal.resample(in_memory, pixel_scale_ratio=0.5, tile_shape=tiles)
    assert [k for k in dict(ref.__dask_graph__()) if "-leaf-" in str(k)]
    for name in mosaic.data_vars:
        np.testing.assert_array_equal(mosaic[name].values, ref[name].values, err_msg=name)


def test_other_inputs_are_cut_to_a_tiles_extent():
    """Chunks about a tile's extent on the input (or smaller) are kept; larger ones are cut to about it."""
    import dask.array as da

    from daskcal.image._resample import _split_chunks

    arr = da.zeros((1000, 300), chunks=(1000, 300))
    assert _split_chunks(arr, 100).chunks == ((100,) * 10, (100,) * 3)
    assert _split_chunks(arr, 130).chunks == ((125,) * 8, (150, 150))
    small = da.zeros((1000, 300), chunks=(128, 64))
    assert _split_chunks(small, 100) is small


@pytest.mark.parametrize("weight_type", ["ivm", "exptime", "none"])
@pytest.mark.parametrize(("enable_var", "compute_err"), [(True, "from_var"), (False, "driz_err"), (True, None)])
def test_undivided_sums_add_as_their_means_do(weight_type, enable_var, compute_err):
    """TileSums adds the one-pass kernel's undivided Sums in one compiled pass; the result is bit for bit what
    adding their means (the Window path of drizzle's C kernels) gives, and two blocks meeting in the tile
    (Sums.union) give what their united sums give."""
    from daskcal.image import _driz

    spec = _driz.DrizzleSpec(kernel="square", pixfrac=1.0, psr=1.0, weight_type=weight_type, good_bits=0,
                             enable_ctx=True, enable_var=enable_var, compute_err=compute_err, propagate_dq=True,
                             fillval=np.nan)
    rng = np.random.default_rng(3)
    shape = (30, 40)
    wht = rng.uniform(0.5, 2.0, shape) * (rng.uniform(size=shape) > 0.2)
    swd = wht * rng.normal(10.0, 1.0, shape)
    planes = ("var_rnoise", "var_poisson", "err")
    swv = wht * rng.uniform(0.5, 3.0, (3, *shape))
    swv[1, 3, 4] = np.nan  # a NaN variance is skipped
    ctx, dq = wht > 0, rng.integers(0, 4, shape).astype(np.uint32)
    tile = (5, 50, 2, 47)

    def summed(pieces):
        sums = _driz.TileSums(tile, 1, spec)
        sums.add_input(pieces, 0, 95.0)
        return sums.finalize(tile)

    got = summed([_driz.Sums(8, 4, wht, swd, swv, planes, ctx, dq)])
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(wht != 0, 1.0 / np.where(wht != 0, wht, 1.0), 0.0)
        means = {n: swv[k] * inv for k, n in enumerate(planes)}
    err = means.pop("err")
    expected = summed([_driz.Window(8, 4, wht, swd * inv, means, err, ctx, dq)])
    assert set(got) == set(expected)
    for name in got:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert np.isfinite(got["data"]).sum() > 0.7 * shape[0] * shape[1]
    # the same sums as two blocks overlapping on rows 12..17, each holding part of the seam's sums
    seam = ((np.arange(shape[0]) >= 12) & (np.arange(shape[0]) < 18))[:, None]

    def block(rows, share):
        frac = np.where(seam, share, 1.0)[rows]
        return _driz.Sums(8 + rows.start, 4, wht[rows] * frac, swd[rows] * frac, swv[:, rows] * frac, planes,
                          ctx[rows], dq[rows])

    top, bottom = block(slice(0, 18), 0.75), block(slice(12, 30), 0.25)
    united = _driz.Sums.union([top, bottom])
    np.testing.assert_allclose(united.wht, wht, rtol=1e-14)
    split = summed([top, bottom])
    for name in got:
        np.testing.assert_allclose(split[name], got[name], rtol=1e-6, err_msg=name)


def test_released_sums_give_their_buffer_to_the_next_tile_zeroed():
    """A tile's sums, once finalized, hand their buffer to the next sums of the same size, which start at zero;
    the released sums can no longer be used."""
    from daskcal.image import _driz

    spec = _driz.DrizzleSpec(kernel="square", pixfrac=1.0, psr=1.0, weight_type="ivm", good_bits=0, enable_ctx=True,
                             enable_var=True, compute_err="from_var", propagate_dq=True, fillval=np.nan)
    pool = _driz._BufferPool(2**30)
    old, _driz._POOL = _driz._POOL, pool
    try:
        first = _driz.TileSums((0, 20, 0, 30), 1, spec)
        first._buf[:] = 7
        buf = first._buf
        first.release()
        assert first.wht is None and first.nbytes == 0
        with pytest.raises(RuntimeError, match="released"):
            first.finalize((0, 20, 0, 30))
        second = _driz.TileSums((0, 20, 0, 30), 1, spec)
        assert second._buf is buf and not buf.any()
        other = _driz.TileSums((0, 10, 0, 30), 1, spec)  # another size: a new buffer
        assert other._buf is not buf
    finally:
        _driz._POOL = old


def test_smaller_sums_take_a_kept_buffer_up_to_twice_their_size():
    """Edge tiles and input pieces come in many sizes: sums take the smallest kept buffer of their size to twice
    it (its used part zeroed), not one larger; pickled, they carry only the part their arrays use."""
    import pickle

    from daskcal.image import _driz

    spec = _driz.DrizzleSpec(kernel="square", pixfrac=1.0, psr=1.0, weight_type="ivm", good_bits=0, enable_ctx=True,
                             enable_var=True, compute_err="from_var", propagate_dq=True, fillval=np.nan)
    pool = _driz._BufferPool(2**30)
    old, _driz._POOL = _driz._POOL, pool
    try:
        big, huge = _driz.TileSums((0, 40, 0, 30), 1, spec), _driz.TileSums((0, 100, 0, 100), 1, spec)
        big._buf[:] = 7
        huge._buf[:] = 7
        big_buf, huge_buf = big._buf, huge._buf
        big.release()
        huge.release()
        edge = _driz.TileSums((0, 25, 0, 30), 1, spec)  # 25/40 of big's size: big's buffer, not huge's
        assert edge._buf is big_buf
        used = _driz._plan_bytes(edge._plan())
        assert not edge._buf[:used].any() and edge._buf[used:].all()
        assert not edge.wht.any() and not edge.vsum.any() and not edge.con.any()
        edge.wht[3, 4], edge.swd[3, 4], edge.vsum[1, 2, 2] = 2.0, 5.0, 0.5
        back = pickle.loads(pickle.dumps(edge))
        assert back._buf.nbytes == used < big_buf.nbytes
        for name in ("wht", "swd", "vsum", "vwt", "con", "dq"):
            np.testing.assert_array_equal(getattr(back, name), getattr(edge, name), err_msg=name)
        small = _driz.TileSums((0, 5, 0, 30), 1, spec)  # huge is more than twice its size: a new buffer
        assert small._buf is not huge_buf and small._buf.nbytes == _driz._plan_bytes(small._plan())
    finally:
        _driz._POOL = old


def test_chains_per_tile_are_bounded_by_the_mosaic_not_the_inputs(monkeypatch):
    """With many tiles reached, a tile's inputs form one chain however many they are (each chain holds a
    partial sum until the merge); with few, they are cut into chains of CHAIN to keep workers busy. The
    mosaic is the same either way."""
    from daskcal.image import _resample

    sim = daskcal.simulate_images(n=5, shape=(64, 64), seed=3)
    grid = daskcal.output_wcs(sim.images)
    monkeypatch.setattr(_resample, "CHAIN", 2)

    def layout(mosaic):
        graph = dict(mosaic["data"].data.__dask_graph__())
        leaves = [k for k in graph if isinstance(k, str) and "-leaf-" in k]
        merges = [k for k in graph if isinstance(k, str) and "-merge-" in k]
        tiles = {k.split("-leaf-")[0] for k in leaves}
        return len(tiles), len(leaves), len(merges)

    ny, nx = grid.array_shape
    runs = {}
    for parallel in (1, 64):
        monkeypatch.setattr(_resample, "PARALLEL_CHAINS", parallel)
        mosaic = daskcal.resample(sim.images, output_wcs=grid, tile_shape=(ny // 2 + 1, nx // 2 + 1))
        tiles, leaves, merges = layout(mosaic)
        assert tiles == 4 and leaves > 4 * 2
        if parallel == 1:
            assert merges == 0  # one chain a tile
        else:
            assert merges > 4  # chains of 2, merged
        runs[parallel] = mosaic.compute(scheduler="sync")
    for name in runs[1].data_vars:
        np.testing.assert_array_equal(runs[1][name].values, runs[64][name].values, err_msg=name)


def test_save_writes_each_tile_from_its_task(sim, scheduler, tmp_path, monkeypatch):
    """daskcal.save writes a tile's planes from the tile's task: the graph it computes has no task that picks a
    plane from a tile (ten tasks more per tile, each ~1 ms on a cluster), and the store holds what compute()
    gives, empty tiles of a sparse grid included."""
    import xarray as xr

    from daskcal.io import _atomic

    grid = _wide_grid(sim, factor=2)  # the exposures in one corner: tiles no input reaches
    mosaic = daskcal.resample(sim.images, output_wcs=grid, tile_shape=(37, 41))
    assert mosaic.attrs["tiles_written"] < mosaic.data.data.npartitions
    ref = mosaic.compute(scheduler="sync")
    layers = []
    real = _atomic._chunk_writers

    def spy(*args, **kwargs):
        writes = real(*args, **kwargs)
        layers.extend(str(n) for w in writes for n in w.__dask_graph__().layers)
        return writes

    monkeypatch.setattr(_atomic, "_chunk_writers", spy)
    with scheduler():
        daskcal.save(mosaic, tmp_path / "m.zarr")
    assert any(n.startswith("resample-tiles-") for n in layers)
    assert not [n for n in layers if n.startswith(tuple(f"resample-{v}-" for v in mosaic.data_vars))]
    back = xr.open_zarr(tmp_path / "m.zarr", consolidated=False)
    for name in ref.data_vars:
        np.testing.assert_array_equal(back[name].values, ref[name].values, err_msg=name)
    # a plane changed after the call is written through its own chunks
    layers.clear()
    mosaic["data"] = mosaic.data * 2
    with scheduler():
        daskcal.save(mosaic, tmp_path / "twice.zarr")
    assert any(n.startswith("resample-data-") for n in layers)
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "twice.zarr", consolidated=False).data.values,
                                  ref.data.values * 2)
