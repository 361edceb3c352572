"""Reading ramps from Zarr with daskcal's own tasks: values and the read-into-place halo path."""

import re

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from daskcal import detector1, open_ramps, save, simulate
from daskcal.detector._halo import overlap_reading_twice
from daskcal.io._zarr_read import (
    ZarrSource,
    _zstd_content_size,
    read_as_dask,
    zarr_source,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    sim = simulate((2, 5, 45, 38), seed=3, chunks=(16, 16))
    path = tmp_path_factory.mktemp("zr") / "ramps.zarr"
    save(sim.ramps, path)
    return path, sim.ramps


def test_open_ramps_reads_what_xarray_reads(store):
    path, _ = store
    ds = open_ramps(path, chunks=(20, 17))
    ref = xr.open_zarr(path, consolidated=False)
    for name in ds.data_vars:
        assert zarr_source(ds[name].data) is not None, name
        assert ds[name].data.chunks[-2:] == ((20, 20, 5), (17, 17, 4))
        got = ds[name].values
        assert got.dtype == ref[name].dtype
        np.testing.assert_array_equal(got, ref[name].values, err_msg=name)


def test_scaled_variables_are_left_to_xarray(tmp_path):
    ds = xr.Dataset({"v": (("y", "x"), np.arange(12, dtype=np.float32).reshape(3, 4))})
    ds.to_zarr(tmp_path / "s.zarr", zarr_format=3, consolidated=False,
               encoding={"v": {"dtype": "int16", "scale_factor": 0.5, "_FillValue": -1}})
    from daskcal.io._zarr_read import stored_as_is

    opened = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)
    assert not stored_as_is(opened["v"])


@pytest.mark.parametrize("halo", [1, 2, 3])
def test_halo_read_into_place_equals_dask_overlap(store, halo):
    path, _ = store
    arr = open_ramps(path, chunks=(16, 13))["data"].data
    assert zarr_source(arr) is not None
    ref = da.overlap.overlap(arr, depth={2: halo, 3: halo}, boundary="none")
    got = overlap_reading_twice(arr, halo)
    assert got.chunks == ref.chunks
    np.testing.assert_array_equal(got.compute(), ref.compute())


def test_a_changed_array_is_not_taken_for_its_source(store):
    path, _ = store
    arr = open_ramps(path)["data"].data
    assert zarr_source(arr + 1) is None
    assert zarr_source(arr.rechunk((2, 5, 8, 8))) is None


def test_rewritten_store_gets_new_keys(tmp_path):
    a = simulate((1, 3, 8, 8), seed=1).ramps
    save(a, tmp_path / "r.zarr")
    first = read_as_dask(ZarrSource.at(tmp_path / "r.zarr", "data"), (1, 3, 8, 8))
    save(simulate((1, 3, 8, 8), seed=2).ramps, tmp_path / "r.zarr", overwrite=True)
    second = read_as_dask(ZarrSource.at(tmp_path / "r.zarr", "data"), (1, 3, 8, 8))
    assert first.name != second.name
    np.testing.assert_array_equal(second.compute(), simulate((1, 3, 8, 8), seed=2).ramps["data"].values)


def test_detector1_from_zarr_equals_in_memory(store):
    path, ramps = store
    with dask.config.set(scheduler="threads", num_workers=2):
        from_zarr = detector1(open_ramps(path, chunks=(20, 17)))
        in_memory = detector1(ramps.load(), chunks=(20, 17))
        for name in ("rate", "rateints"):
            a, b = getattr(from_zarr, name).compute(), getattr(in_memory, name).compute()
            for v in a.data_vars:
                np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{name}.{v}")


def test_halo_group_shares_edge_tasks_and_equals_dask_overlap(store):
    from daskcal.detector._halo import halo_blocks_group

    path, _ = store
    ds = open_ramps(path, chunks=(16, 13))
    arrays = [ds["data"].data, ds["groupdq"].data, ds["gain"].data, ds["pixeldq"].data]
    halo = 2
    groups = halo_blocks_group(arrays, halo)
    layers = {layer.name for hb in groups for layer in hb.layers}
    assert len(layers) == 1  # one edge-reading layer for all four arrays
    for arr, hb in zip(arrays, groups, strict=True):
        got = hb.to_array(arr)
        depth = {arr.ndim - 2: halo, arr.ndim - 1: halo}
        ref = da.overlap.overlap(arr, depth=depth, boundary="none")
        assert got.chunks == ref.chunks
        np.testing.assert_array_equal(got.compute(), ref.compute())


def _array(tmp_path, name, values, chunks, **kwargs):
    import zarr

    arr = zarr.create_array(tmp_path / name, shape=values.shape, chunks=chunks, dtype=values.dtype, **kwargs)
    arr[...] = values
    return ZarrSource.at(tmp_path, name)


_REGIONS = [
    (slice(0, 2), slice(0, 5), slice(0, 16), slice(0, 16)),  # one whole chunk (decoded in place)
    (slice(None), slice(1, 4), slice(5, 40), slice(3, 37)),  # several chunks, partial ones
    (slice(1, 2), slice(0, 5), slice(32, 45), slice(32, 38)),  # the short chunks at the far edges
    (slice(0, 2), slice(0, 5), slice(7, 7), slice(0, 38)),  # empty
]


@pytest.mark.parametrize("codec", ["blosc", "zstd", "gzip", "none"])
def test_chunk_files_read_what_zarr_reads(tmp_path, codec):
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    from daskcal.io._zarr_read import _chunk_files

    compressors = {"blosc": BloscCodec(cname="lz4", shuffle="shuffle"), "zstd": ZstdCodec(level=3),
                   "gzip": GzipCodec(level=4), "none": None}[codec]
    values = np.random.default_rng(5).normal(size=(2, 5, 45, 38)).astype(np.float32)
    source = _array(tmp_path, "v", values, (2, 5, 16, 16), compressors=compressors)
    assert _chunk_files(source.store, source.name, source.version) is not None
    for region in _REGIONS:
        np.testing.assert_array_equal(source.read(region), values[region])
        want = values[region]
        # into the middle of a larger block, as a halo'd block's core is read
        out = np.full((*want.shape[:2], want.shape[2] + 3, want.shape[3] + 4), -1.0, dtype=np.float32)
        view = out[..., 1:1 + want.shape[2], 2:2 + want.shape[3]]
        source.read_into(region, view)
        np.testing.assert_array_equal(view, want)
        assert (out[..., 0, :] == -1).all() and (out[..., -1] == -1).all()


_LAYOUTS = {"direct": {}, "sharded": {"shards": (32, 32)},
            "big-endian": {"serializer": "big", "compressors": None}}


def _layout(kwargs: dict) -> dict:
    from zarr.codecs import BytesCodec

    return {k: (BytesCodec(endian="big") if k == "serializer" else v) for k, v in kwargs.items()}


@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_chunk_never_written_reads_as_fill_value_only_in_an_array_declared_sparse(tmp_path, layout):
    import zarr

    from daskcal.io._zarr_read import SPARSE_ATTR, ChunkError, _chunk_files

    for name, attrs in (("sparse", {SPARSE_ATTR: True}), ("dense", {})):
        arr = zarr.create_array(tmp_path / name, shape=(64, 40), chunks=(16, 16), dtype=np.uint16, fill_value=7,
                                attributes=attrs, **_layout(_LAYOUTS[layout]))
        arr[40:50, 20:30] = 1  # writes only the chunks (or the shard) there
    sparse, dense = ZarrSource.at(tmp_path, "sparse"), ZarrSource.at(tmp_path, "dense")
    assert (_chunk_files(sparse.store, sparse.name, sparse.version) is None) == (layout != "direct")
    assert not (tmp_path / "sparse" / "c" / "0" / "0").exists()
    want = np.full((64, 40), 7, np.uint16)
    want[40:50, 20:30] = 1
    np.testing.assert_array_equal(sparse.read((slice(0, 64), slice(0, 40))), want)
    out = np.empty((20, 40), np.uint16)
    sparse.read_into((slice(0, 20), slice(0, 40)), out)
    np.testing.assert_array_equal(out, 7)
    np.testing.assert_array_equal(dense.read((slice(40, 48), slice(16, 32))), want[40:48, 16:32])  # written
    stored = (0, 0) if layout == "sharded" else (1, 0)  # the missing chunk, or the shard holding it
    with pytest.raises(ChunkError, match=re.escape(f"{dense.store!r}, variable 'dense'") + ".*no chunk file for chunk "
                       + re.escape(str(stored)) + ".*'daskcal:sparse'"):
        dense.read((slice(16, 20), slice(0, 10)))
    with pytest.raises(ChunkError, match="no chunk file"):
        dense.read_into((slice(16, 20), slice(0, 10)), np.empty((4, 10), np.uint16))
    count = "3 of its 4 chunks" if layout == "sharded" else "10 of its 12 chunks"  # 1 shard, or 2 chunks, written
    with pytest.raises(ChunkError, match=r"no chunk file for chunks \(0, 0\), .*" + re.escape(count)):
        dense.check()
    sparse.check()


@pytest.mark.parametrize("how", ["truncated", "garbage"])
@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_corrupt_chunk_is_a_chunk_error_on_every_path(tmp_path, layout, how):
    import zarr

    from daskcal.io._zarr_read import ChunkError

    values = np.arange(64 * 40, dtype=np.float32).reshape(64, 40)
    arr = zarr.create_array(tmp_path / "v", shape=values.shape, chunks=(16, 16), dtype=np.float32,
                            **_layout(_LAYOUTS[layout]))
    arr[...] = values
    source = ZarrSource.at(tmp_path, "v")
    stored = tmp_path / "v" / "c" / "1" / "0"  # chunk (1, 0): rows 16-31, or the (32, 32) shard of rows 32-63
    raw = stored.read_bytes()
    if how == "truncated":
        stored.write_bytes(raw[: len(raw) // 2])
    else:
        # (garbage of a raw chunk's own size would be values: without a checksum nothing can tell)
        stored.write_bytes(np.random.default_rng(1).integers(0, 256, len(raw) + 5, dtype=np.uint8).tobytes())
    source.check()  # every file is there: only reading it finds the damage
    region = (slice(32, 40) if layout == "sharded" else slice(16, 24), slice(0, 10))
    with pytest.raises(ChunkError, match=re.escape(f"{source.store!r}, variable 'v', chunk (1, 0)")):
        source.read(region)
    # the other chunks still read
    np.testing.assert_array_equal(source.read((slice(0, 16), slice(0, 40))), values[:16])


def test_chunk_files_beyond_the_grid_are_refused(tmp_path):
    import json

    from daskcal.io._zarr_read import ChunkError, check_store

    source = _array(tmp_path, "v", np.ones((40, 40), np.float32), (16, 16))
    check_store(tmp_path, ["v", "not-an-array"])
    meta = json.loads((tmp_path / "v" / "zarr.json").read_text())
    meta["shape"] = [40, 30]  # 2 chunk columns declared, 3 stored
    (tmp_path / "v" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ChunkError, match=r"'v', chunk \(0, 2\): its zarr.json disagrees with its chunk files"):
        check_store(tmp_path, ["v"])
    assert source  # (the source of the unedited array)


@pytest.mark.parametrize("layout", ["sharded", "big-endian"])
def test_other_layouts_are_read_by_zarr(tmp_path, layout):
    from zarr.codecs import BytesCodec

    from daskcal.io._zarr_read import _chunk_files

    values = np.arange(40 * 36, dtype=np.float32).reshape(40, 36)
    if layout == "sharded":
        source = _array(tmp_path, "v", values, (8, 12), shards=(16, 36))
    else:
        source = _array(tmp_path, "v", values, (16, 16), serializer=BytesCodec(endian="big"), compressors=None)
    assert _chunk_files(source.store, source.name, source.version) is None
    region = (slice(3, 33), slice(5, 36))
    np.testing.assert_array_equal(source.read(region), values[region])
    out = np.empty((30, 31), dtype=np.float32)
    source.read_into(region, out)
    np.testing.assert_array_equal(out, values[region])


def test_saved_ramps_are_read_without_zarr_python(store):
    from daskcal.io._zarr_read import _chunk_files

    path, _ = store
    for name in ("data", "groupdq", "pixeldq", "gain", "readnoise", "saturation"):
        source = ZarrSource.at(path, name)
        assert _chunk_files(source.store, source.name, source.version) is not None, name


@pytest.mark.parametrize("codec", ["blosc", "zstd", "zstd, size not in header", "gzip"])
def test_chunk_of_the_wrong_size_is_an_error(tmp_path, codec):
    import shutil

    import numcodecs
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    compressors = {"blosc": BloscCodec(), "zstd": ZstdCodec(), "zstd, size not in header": ZstdCodec(),
                   "gzip": GzipCodec()}[codec]
    values = np.ones((32, 32), dtype=np.float32)
    source = _array(tmp_path, "a", values, (16, 16), compressors=compressors)
    _array(tmp_path, "b", values, (8, 8), compressors=compressors)
    shutil.copy(tmp_path / "b" / "c" / "0" / "0", tmp_path / "a" / "c" / "0" / "0")
    if codec == "zstd, size not in header":  # a streamed frame: the reader must decode to learn its size
        raw = (tmp_path / "a" / "c" / "0" / "0").read_bytes()
        assert _zstd_content_size(raw) == 256
        (tmp_path / "a" / "c" / "0" / "0").write_bytes(_zstd_without_content_size(values[:8, :8]))
    with pytest.raises(ValueError, match=f"{codec.split(',')[0].capitalize()} chunk holds 256 bytes, expected 1024"):
        source.read((slice(0, 16), slice(0, 16)))
    # the chunks of the right size still read
    np.testing.assert_array_equal(source.read((slice(16, 32), slice(0, 32))), values[16:])
    assert numcodecs  # decoded by numcodecs


def _zstd_without_content_size(block) -> bytes:
    """A Zstandard frame of ``block`` whose header omits the content size (as streaming compressors write)."""
    import numcodecs
    from numcodecs import zstd

    data = np.ascontiguousarray(block)
    raw = bytes(numcodecs.Zstd().encode(data))
    assert raw[4] & 0xE3 == 0x60  # single segment, a 2-byte content size, no dictionary
    # no content size, not single segment: a window byte instead (0: 1 KiB, enough for 256 bytes)
    out = raw[:4] + bytes([raw[4] & 0x04, 0x00]) + raw[7:]
    assert zstd.decompress(out) == data.tobytes() and _zstd_content_size(out) is None
    return out


@pytest.mark.parametrize("codec", ["blosc", "zstd", "gzip", "none"])
def test_chunk_shape_that_disagrees_with_the_chunk_files_is_refused(tmp_path, codec):
    import json

    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    from daskcal.io._zarr_read import ChunkError, check_store

    compressors = {"blosc": BloscCodec(), "zstd": ZstdCodec(), "gzip": GzipCodec(), "none": None}[codec]
    _array(tmp_path, "v", np.ones((40, 40), np.float32), (16, 16), compressors=compressors)
    check_store(tmp_path, ["v"])
    meta = json.loads((tmp_path / "v" / "zarr.json").read_text())
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [16, 14]  # still 3 chunk columns for 40
    (tmp_path / "v" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ChunkError, match=r"'v', chunk \(0, 0\): its zarr.json disagrees .*"
                                         r"holds 1024 bytes, a chunk of \(16, 14\) float32 takes 896"):
        check_store(tmp_path, ["v"])


def test_reading_many_arrays_in_turn_keeps_them_open(tmp_path, monkeypatch):
    """A resample tile task reads each of its inputs' arrays in turn (16 inputs x 6 arrays here): the second
    round opens none again (with a cache of 64 arrays, every read had reopened its array: ~2 ms each)."""
    import zarr

    from daskcal.io import _zarr_read

    values = np.arange(20 * 24, dtype=np.float32).reshape(20, 24)
    sources = [_array(tmp_path / f"in{k}", name, values + k, (8, 8))
               for k in range(16) for name in ("data", "dq", "err", "var_flat", "var_poisson", "var_rnoise")]
    opened = []
    real = zarr.open_array
    monkeypatch.setattr(zarr, "open_array", lambda *a, **kw: opened.append(a) or real(*a, **kw))
    region = (slice(3, 17), slice(5, 21))
    for round_ in range(2):
        for k, source in enumerate(sources):
            np.testing.assert_array_equal(source.read(region), values[region] + k // 6)
        if round_ == 0:
            assert len(opened) >= len(sources)
            opened.clear()
    assert opened == []
    assert _zarr_read._chunk_files.cache_info().maxsize >= 1024
