"""Writing Zarr chunks with daskcal's own tasks: what zarr-python reads back, and the product write graph."""

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

from daskcal import detector1, simulate
from daskcal.io._atomic import _chunk_writers, _Target, save_products
from daskcal.io._zarr_read import ZarrSource
from daskcal.io._zarr_write import chunk_writer, register_slice, slice_of


def _empty(tmp_path, name, shape, chunks, dtype=np.float32, **kwargs):
    zarr.create_array(tmp_path / name, shape=shape, chunks=chunks, dtype=dtype, **kwargs)
    return ZarrSource.at(tmp_path, name)


@pytest.mark.parametrize("codec", ["blosc", "zstd", "gzip", "none"])
def test_chunk_writer_writes_what_zarr_reads(tmp_path, codec):
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    compressors = {"blosc": BloscCodec(cname="lz4", shuffle="shuffle"), "zstd": ZstdCodec(level=3),
                   "gzip": GzipCodec(level=4), "none": None}[codec]
    values = np.random.default_rng(2).normal(size=(3, 45, 38)).astype(np.float32)
    source = _empty(tmp_path, "v", values.shape, (3, 16, 16), compressors=compressors, fill_value=np.nan)
    writer = chunk_writer(source)
    assert writer is not None
    # blocks of one, two and the short edge chunks (which Zarr stores padded to a whole chunk)
    for y0, y1 in ((0, 32), (32, 45)):
        for x0, x1 in ((0, 16), (16, 38)):
            assert writer.covers((0, y0, x0), (3, y1 - y0, x1 - x0))
            writer.write((0, y0, x0), values[:, y0:y1, x0:x1])
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "v", mode="r")[...], values)
    # and daskcal's own reader agrees
    np.testing.assert_array_equal(source.read((slice(None), slice(0, 45), slice(0, 38))), values)


def test_chunk_writer_refuses_blocks_that_are_not_whole_chunks(tmp_path):
    source = _empty(tmp_path, "dq", (40, 36), (16, 16), dtype=np.uint32, fill_value=0)
    writer = chunk_writer(source)
    assert not writer.covers((8, 0), (16, 16))  # starts inside a chunk
    assert not writer.covers((0, 0), (10, 16))  # ends inside a chunk that is not the last
    assert not writer.covers((32, 32), (16, 16))  # runs past the array's end
    assert writer.covers((32, 32), (8, 4))  # the last, short chunk
    with pytest.raises(ValueError, match="cannot write"):
        writer.write((8, 0), np.zeros((16, 16), dtype=np.uint32))
    with pytest.raises(ValueError, match="cannot write"):
        writer.write((0, 0), np.zeros((16, 16), dtype=np.float32))  # not the array's dtype
    assert not (tmp_path / "dq" / "c").exists()


@pytest.mark.parametrize("layout", ["sharded", "big-endian", "two compressors"])
def test_other_layouts_have_no_chunk_writer(tmp_path, layout):
    from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec

    kwargs = {"sharded": {"shards": (32, 32)}, "big-endian": {"serializer": BytesCodec(endian="big")},
              "two compressors": {"compressors": (ZstdCodec(), Crc32cCodec())}}[layout]
    assert chunk_writer(_empty(tmp_path, "v", (40, 36), (16, 16), **kwargs)) is None


def test_register_slice_checks_it_is_a_view():
    stacked = dask.array.zeros((4, 32, 32), chunks=(4, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="view"):
        register_slice(stacked[0].astype(np.float64), stacked, 0, np.float64)
    with pytest.raises(ValueError, match="chunks"):
        register_slice(stacked[0].rechunk(8), stacked, 0)


@pytest.fixture(scope="module")
def fitted():
    sim = simulate((2, 5, 45, 38), seed=4, chunks=(16, 16))
    return detector1(sim.ramps)


def test_products_are_written_from_the_stacked_blocks(fitted, tmp_path):
    products = {"rate": fitted.rate, "rateints": fitted.rateints}
    targets = [(_Target(None, None), ds[v].data) for ds in products.values() for v in ds.data_vars]
    stacked = {slice_of(arr).source.name for _, arr in targets}
    assert len(stacked) == 1  # every variable of both products is a slice of one array
    (writes,) = _chunk_writers(targets)
    layer = writes.dask.layers[writes.name]
    assert writes.dask.dependencies[writes.name] == stacked
    # one task per (y, x) chunk, each taking one stacked block, and the write plan they share
    assert len(layer) == 3 * 3 + 1
    assert sum(isinstance(k, str) and k.startswith("write-plan-") for k in layer) == 1
    with dask.config.set(scheduler="threads"):
        paths = save_products(products, tmp_path / "out")
        for name, ds in products.items():
            with xr.open_zarr(paths[name], consolidated=False) as got:
                for v in ds.data_vars:
                    want = ds[v].values
                    assert got[v].dtype == want.dtype, (name, v)
                    np.testing.assert_array_equal(got[v].values, want, err_msg=f"{name}.{v}")
    # every chunk file was written here, none through zarr-python's padding of missing ones
    assert len(list((paths["rate"] / "dq" / "c").rglob("*"))) == 3 + 3 * 3


def test_variables_zarr_python_must_write_are_still_written(fitted, tmp_path):
    from zarr.codecs import Crc32cCodec, ZstdCodec

    rate = fitted.rate.copy()
    rate["err"].encoding["compressors"] = (ZstdCodec(), Crc32cCodec())  # no direct writer for this layout
    rate["twice"] = rate["data"] * 2  # not a slice of the stacked array
    with dask.config.set(scheduler="threads"):
        paths = save_products({"rate": rate}, tmp_path / "out")
    with xr.open_zarr(paths["rate"], consolidated=False) as got:
        for v in ("data", "err", "twice", "dq"):
            np.testing.assert_array_equal(got[v].values, rate[v].values, err_msg=v)


def test_take_slice_is_one_task_per_chunk_and_equals_dask_slicing():
    from daskcal.io._zarr_write import take_slice

    values = np.random.default_rng(3).normal(size=(7, 40, 36)).astype(np.float32)
    stacked = dask.array.from_array(values, chunks=(7, 16, 16))
    for index, dtype in ((2, np.float32), (slice(3, 6), np.uint32)):
        arr = take_slice(stacked, index, dtype)
        assert len(arr.dask.layers[arr.name]) == 3 * 3
        assert slice_of(arr).index == index
        np.testing.assert_array_equal(arr.compute(), values[index].view(dtype))
        assert arr.chunks == stacked[index].chunks
    with pytest.raises(ValueError, match="one chunk"):
        take_slice(stacked.rechunk((3, 16, 16)), 0)


def test_products_metadata_is_what_to_zarr_writes(fitted, tmp_path):
    """save_products writes the metadata from a one-chunk stand-in of each dask variable; every
    array's and group's zarr.json must still be what xarray's own to_zarr writes (consolidated)."""
    import json
    import warnings

    from zarr.codecs import ZstdCodec

    from daskcal.io._atomic import _encoding

    rate = fitted.rate.copy()
    rate["data"].attrs["units"] = "DN/s"
    rate["err"].encoding["chunks"] = (8, 8)  # its own chunks (dropped: the compressor entry replaces them)
    rate["dq"].encoding.update(chunks=(8, 16), compressors=(ZstdCodec(level=1),))  # its own chunks and compressor
    rate["twice"] = (rate["data"] * 2).chunk({"y": (32, 13)})  # irregular dask chunks
    rate["flat"] = xr.ones_like(rate["data"]).compute()  # numpy-backed: written with the metadata
    with dask.config.set(scheduler="threads"):
        paths = save_products({"rate": rate}, tmp_path / "out")
        with warnings.catch_warnings():  # zarr: consolidated metadata is not yet in the v3 specification
            warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
            rate.to_zarr(tmp_path / "ref.zarr", zarr_format=3, consolidated=True, encoding=_encoding(rate))
    files = sorted(p.relative_to(tmp_path / "ref.zarr") for p in (tmp_path / "ref.zarr").rglob("zarr.json"))
    assert len(files) == 1 + len(rate.data_vars) + len(rate.coords)
    for rel in files:
        assert json.loads((paths["rate"] / rel).read_text()) == json.loads((tmp_path / "ref.zarr" / rel).read_text()), rel
    with xr.open_zarr(paths["rate"], consolidated=False) as got:
        for v in rate.data_vars:
            np.testing.assert_array_equal(got[v].values, rate[v].values, err_msg=v)


def test_products_whose_dask_chunks_straddle_zarr_chunks_are_refused(fitted, tmp_path):
    """Two tasks must never write one Zarr chunk (as xarray's to_zarr refuses)."""
    for bad, match in (((12, 18, 15), "'twice'.*dask chunks"), ((16, 8, 21), "'twice'.*dask chunks")):
        rate = fitted.rate.copy()
        rate["twice"] = (rate["data"] * 2).chunk({"y": bad})
        with pytest.raises(ValueError, match=match):
            save_products({"rate": rate}, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_products_have_every_chunk_even_of_the_fill_value(fitted, tmp_path):
    """Chunks equal to the fill value are written too, on every write path (a missing chunk reads as an error)."""
    import dask.array as da
    from zarr.codecs import Crc32cCodec, ZstdCodec

    rate = fitted.rate.copy()
    zeros = rate["dq"].copy(data=da.zeros(rate["dq"].shape, dtype=np.uint32, chunks=rate["dq"].data.chunks))
    rate["zeros"] = zeros  # Zarr's fill value for integers is 0
    rate["zeros_zarr"] = zeros.copy()  # written through zarr-python
    rate["zeros_zarr"].encoding["compressors"] = (ZstdCodec(), Crc32cCodec())
    rate["odd"] = zeros.chunk(8)  # chunked unlike the rest: written by da.store
    rate["nans"] = xr.full_like(rate["data"], np.nan)  # xarray's fill value for floats is NaN
    rate["nans_numpy"] = rate["nans"].compute()  # numpy-backed: written by to_zarr itself
    with dask.config.set(scheduler="threads"):
        paths = save_products({"rate": rate}, tmp_path / "out")
    for v in ("zeros", "zeros_zarr", "odd", "nans", "nans_numpy"):
        np.testing.assert_array_equal(np.asarray(zarr.open_array(paths["rate"] / v)), rate[v].values, err_msg=v)
    for v, n in (("zeros", 9), ("zeros_zarr", 9), ("odd", 6 * 5), ("nans", 9), ("nans_numpy", 1), ("dq", 9)):
        files = [p for p in (paths["rate"] / v / "c").rglob("*") if p.is_file()]
        assert len(files) == n, v
    from daskcal.io._zarr_read import check_store

    check_store(paths["rate"], rate.data_vars)


@pytest.mark.parametrize("chunks", [(40, 30), (64, 64), (25, 64), (64, 25)])
def test_variables_copied_from_zarr_are_read_by_the_write_tasks(tmp_path, chunks):
    """An unchanged variable of a Zarr input (a crf product's data, err and variances) is read inside the write
    task, not by read tasks whose chunks the scheduler could run early and hold: the write graph has no
    read tasks for it and depends only on what was computed; the copy equals the input."""
    import daskcal

    sim = daskcal.simulate_images(1, (64, 64), seed=3)
    daskcal.save(sim.images[0], tmp_path / "in.zarr")
    ds = daskcal.open_images([tmp_path / "in.zarr"], chunks=chunks)[0]
    flagged = ds.assign(dq=ds["dq"] | np.uint32(daskcal.DQ.OUTLIER))  # computed from a read
    targets = [(_Target(None, None), flagged[v].data) for v in flagged.data_vars]
    (writes,) = _chunk_writers(targets)
    deps = writes.dask.dependencies[writes.name]
    assert len(deps) == 1 and next(iter(deps)) == flagged["dq"].data.name
    reads = {n for n in writes.dask.layers if n.startswith("zarr-read-")}
    assert reads == {ds["dq"].data.name}  # only dq, whose flags are computed from it
    for scheduler in ("sync", "threads"):
        out = tmp_path / f"out-{scheduler}"
        with dask.config.set(scheduler=scheduler):
            paths = save_products({"crf": flagged}, out)
        with xr.open_zarr(paths["crf"], consolidated=False) as got:
            for v in flagged.data_vars:
                np.testing.assert_array_equal(got[v].values, flagged[v].values, err_msg=v)


def test_products_of_different_chunk_grids_each_get_their_own_write_tasks(tmp_path):
    """A mosaic (tiles) saved with its exposures (their own chunks), the mosaic first: every product is written
    by write tasks of its own grid (before, those not on the first product's grid went through da.store, which
    kept separate read tasks for the exposures' copied variables)."""
    import daskcal

    sim = daskcal.simulate_images(2, (64, 64), seed=3)
    for k, ds in enumerate(sim.images):
        daskcal.save(ds, tmp_path / f"in{k}.zarr")
    images = daskcal.open_images([tmp_path / f"in{k}.zarr" for k in range(2)], chunks=(40, 30))
    flagged = [ds.assign(dq=ds["dq"] | np.uint32(daskcal.DQ.OUTLIER)) for ds in images]
    mosaic = xr.Dataset({"data": (("y", "x"), dask.array.ones((70, 90), np.float32, chunks=(64, 64)))})
    products = {"mosaic": mosaic, **{f"crf{k}": ds for k, ds in enumerate(flagged)}}
    targets = [(_Target(None, None), ds[v].data) for ds in products.values() for v in ds.data_vars]
    writes = _chunk_writers(targets)
    assert len(writes) == 2  # one per grid
    layers = {n for w in writes for n in w.dask.layers}
    assert not any(n.startswith("store-") for n in layers)
    assert {n for n in layers if n.startswith("zarr-read-")} == {ds["dq"].data.name for ds in images}
    with dask.config.set(scheduler="threads"):
        paths = save_products(products, tmp_path / "out")
    for name, ds in products.items():
        with xr.open_zarr(paths[name], consolidated=False) as got:
            for v in ds.data_vars:
                np.testing.assert_array_equal(got[v].values, ds[v].values, err_msg=f"{name}.{v}")


def test_each_product_gets_its_own_write_tasks(fitted, tmp_path):
    """Exposures saved together (an image3 run's crf products) are written by write tasks of their own: the
    task writing a chunk of one exposure does not wait for (and hold blocks of) the others. A ramp fit's rate
    and rateints, slices of one stacked array, still share their tasks."""
    import daskcal

    sim = daskcal.simulate_images(3, (64, 64), seed=3)
    for k, ds in enumerate(sim.images):
        daskcal.save(ds, tmp_path / f"in{k}.zarr")
    images = daskcal.open_images([tmp_path / f"in{k}.zarr" for k in range(3)], chunks=(40, 30))
    flagged = {f"crf{k}": ds.assign(dq=ds["dq"] | np.uint32(daskcal.DQ.OUTLIER)) for k, ds in enumerate(images)}
    targets = [(_Target(None, None, product=name), ds[v].data) for name, ds in flagged.items() for v in ds.data_vars]
    writes = _chunk_writers(targets)
    assert len(writes) == 3
    for w, ds in zip(writes, flagged.values(), strict=True):
        assert w.dask.dependencies[w.name] == {ds["dq"].data.name}  # its own exposure's flags only
    fit = {"rate": fitted.rate, "rateints": fitted.rateints}
    targets = [(_Target(None, None, product=name), ds[v].data) for name, ds in fit.items() for v in ds.data_vars]
    (writes,) = _chunk_writers(targets)
    assert writes.dask.dependencies[writes.name] == {slice_of(arr).source.name for _, arr in targets}
    with dask.config.set(scheduler="threads"):
        paths = save_products(flagged, tmp_path / "out")
    for name, ds in flagged.items():
        with xr.open_zarr(paths[name], consolidated=False) as got:
            for v in ds.data_vars:
                np.testing.assert_array_equal(got[v].values, ds[v].values, err_msg=f"{name}.{v}")
