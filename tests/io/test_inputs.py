"""Inputs fail loudly (issue 11): a missing, corrupt or inconsistent chunk of a Zarr input is an error
naming the store, the variable and the chunk, never the fill value nor a codec's traceback."""

import json
import re
import shutil

import dask
import numpy as np
import pytest
import xarray as xr

import daskcal


def _named(store, var: str, chunk: tuple) -> str:
    """The pattern of an error naming ``store``, variable ``var`` and chunk ``chunk``."""
    return re.escape(f"Zarr store {str(store.resolve())!r}, variable {var!r}") + ".*" + re.escape(str(chunk))


def _corrupt(path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(raw), dtype=np.uint8).tobytes())
    else:  # empty
        path.write_bytes(b"")


def _shrink_y(store, names, ny: int) -> None:
    """Edit the zarr.json of arrays ``names`` to say ``ny`` rows (their chunk files stay)."""
    for name in names:
        meta_path = store / name / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["shape"][-2] = ny
        meta_path.write_text(json.dumps(meta))


# ---------------------------------------------------------------- ramp stores -> detector1

RAMP_VARS = ("data", "groupdq", "pixeldq", "gain", "readnoise", "saturation", "superbias")


@pytest.fixture(scope="module")
def ramp_store(tmp_path_factory):
    sim = daskcal.simulate((1, 4, 48, 40), seed=4, chunks=(16, 16))
    path = tmp_path_factory.mktemp("ramps") / "ramps.zarr"
    daskcal.save(sim.ramps, path)
    return path


@pytest.fixture
def ramps(ramp_store, tmp_path):
    """A fresh copy of the ramp store, to break."""
    path = tmp_path / "ramps.zarr"
    shutil.copytree(ramp_store, path)
    return path


def _detector1_rate(path):
    with dask.config.set(scheduler="sync"):
        return daskcal.detector1(daskcal.open_ramps(path)).rate["data"].values


def test_saved_ramps_have_every_chunk_even_of_zeros(ramp_store):
    with xr.open_zarr(ramp_store, consolidated=False) as ds:
        assert not ds["groupdq"].values.any() and not ds["pixeldq"].values.any()  # all fill value
    for name in RAMP_VARS:
        files = [p for p in (ramp_store / name / "c").rglob("*") if p.is_file()]
        assert len(files) == 3 * 3, name  # a 48 x 40 cube in 16 x 16 chunks


@pytest.mark.parametrize("name", ["data", "groupdq", "gain"])
def test_ramps_missing_a_chunk_are_refused_at_open(ramps, name):
    lead = "0/0/" if name in ("data", "groupdq") else ""
    (ramps / name / "c" / f"{lead}1/2").unlink()
    chunk = (0, 0, 1, 2) if lead else (1, 2)
    with pytest.raises(ValueError, match=_named(ramps, name, chunk) + ", 1 of its 9 chunks: deleted.*'daskcal:sparse'"):
        daskcal.open_ramps(ramps)


def test_ramp_chunk_deleted_after_open_fails_the_task_that_reads_it(ramps):
    ds = daskcal.open_ramps(ramps)
    (ramps / "data" / "c" / "0" / "0" / "2" / "1").unlink()
    with dask.config.set(scheduler="sync"), pytest.raises(ValueError, match=_named(ramps, "data", (0, 0, 2, 1))):
        daskcal.detector1(ds).rate["data"].values


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("name", ["data", "groupdq"])
def test_corrupt_ramp_chunk_is_a_named_error(ramps, how, name):
    _corrupt(ramps / name / "c" / "0" / "0" / "1" / "1", how)
    with pytest.raises(ValueError, match=_named(ramps, name, (0, 0, 1, 1)) + ".*corrupt"):
        _detector1_rate(ramps)


def test_ramp_zarr_json_with_fewer_rows_than_its_chunks_is_refused(ramps):
    _shrink_y(ramps, RAMP_VARS, 32)  # 2 chunk rows declared, 3 stored
    with pytest.raises(ValueError, match=re.escape(str(ramps.resolve())) + ".*beyond its grid"):
        daskcal.open_ramps(ramps)


def test_ramp_zarr_json_whose_chunk_shape_disagrees_with_the_chunks_is_refused(ramps):
    meta_path = ramps / "data" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["chunk_grid"]["configuration"]["chunk_shape"][-2] = 17  # still 3 chunk rows for 48 rows
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=_named(ramps, "data", (0, 0, 0, 0)) + ": its zarr.json disagrees"
                       + ".*holds 4096 bytes, a chunk of \\(1, 4, 17, 16\\) float32 takes 4352"):
        daskcal.open_ramps(ramps)


def test_ramp_chunk_of_another_size_fails_the_task_that_reads_it(ramps):
    import numcodecs

    ds = daskcal.open_ramps(ramps)
    half = numcodecs.Blosc(cname="lz4", shuffle=numcodecs.Blosc.SHUFFLE).encode(np.ones((1, 4, 16, 8), np.float32))
    (ramps / "data" / "c" / "0" / "0" / "1" / "2").write_bytes(half)  # a chunk of 8 columns, not 16
    with dask.config.set(scheduler="sync"), pytest.raises(
            ValueError, match=_named(ramps, "data", (0, 0, 1, 2)) + ".*chunk shape \\(1, 4, 16, 16\\).*"
            "Blosc chunk holds 2048 bytes, expected 4096"):
        daskcal.detector1(ds).rate["data"].values


# ---------------------------------------------------------------- image stores -> resample

IMAGE_VARS = ("data", "err", "dq", "var_rnoise", "var_poisson", "var_flat")


@pytest.fixture(scope="module")
def image_stores(tmp_path_factory):
    sim = daskcal.simulate_images(n=2, shape=(40, 50), seed=11, n_stars=3)
    root = tmp_path_factory.mktemp("images")
    paths = []
    for k, ds in enumerate(sim.images):
        paths.append(root / f"im{k}.zarr")
        daskcal.save(ds.chunk({"y": 16, "x": 16}), paths[-1])
    return paths, sim.images


@pytest.fixture
def images(image_stores, tmp_path):
    """Fresh copies of the image stores, to break."""
    paths = []
    for p in image_stores[0]:
        paths.append(tmp_path / p.name)
        shutil.copytree(p, paths[-1])
    return paths


def _mosaic(images):
    with dask.config.set(scheduler="sync"):
        return daskcal.resample(images)["data"].values


def test_image_stores_read_what_was_saved(image_stores):
    paths, truth = image_stores
    from daskcal.io._zarr_read import zarr_source

    opened = daskcal.open_images(paths, chunks=(32, 32))
    for ds, want in zip(opened, truth, strict=True):
        assert ds["data"].data.chunks == ((32, 8), (32, 18))  # whole stored chunks, as xarray chunked them
        for v in IMAGE_VARS:
            assert zarr_source(ds[v].data) is not None, v  # read by daskcal's tasks
            np.testing.assert_array_equal(ds[v].values, want[v].values, err_msg=v)


@pytest.mark.parametrize("name", ["data", "dq"])
def test_image_store_missing_a_chunk_is_refused_at_open(images, name):
    (images[1] / name / "c" / "1" / "2").unlink()
    with pytest.raises(ValueError, match=_named(images[1], name, (1, 2)) + ", 1 of its 12 chunks"):
        daskcal.open_images(images)


@pytest.mark.parametrize("name", ["data", "dq", "var_rnoise"])
def test_image_chunk_deleted_after_open_fails_resample(images, name):
    opened = daskcal.open_images(images)
    (images[0] / name / "c" / "1" / "1").unlink()
    with dask.config.set(scheduler="sync"), pytest.raises(ValueError, match=_named(images[0], name, (1, 1))):
        daskcal.resample(opened)["data"].values


@pytest.mark.parametrize("how", ["truncated", "garbage"])
@pytest.mark.parametrize("name", ["data", "dq"])
def test_corrupt_image_chunk_fails_resample_with_a_named_error(images, how, name):
    _corrupt(images[0] / name / "c" / "0" / "1", how)
    with pytest.raises(ValueError, match=_named(images[0], name, (0, 1)) + ".*corrupt"):
        _mosaic(daskcal.open_images(images))


def test_image_zarr_json_with_fewer_rows_than_its_chunks_is_refused(images):
    _shrink_y(images[0], IMAGE_VARS, 30)  # 2 chunk rows declared, 3 stored
    with pytest.raises(ValueError, match=re.escape(str(images[0].resolve())) + ".*beyond its grid"):
        daskcal.open_images(images)


def _plain_store(ds, path, write_empty_chunks=False):
    """``ds`` written by plain xarray, without daskcal (zarr's global setting: older xarray/zarr
    pairs have no per-call ``write_empty_chunks`` that both accept)."""
    import zarr

    ds = ds.chunk({"y": 16, "x": 16})
    with zarr.config.set({"array.write_empty_chunks": write_empty_chunks}):
        ds.to_zarr(path, zarr_format=3, consolidated=False, mode="w")
    return path


def test_image_store_written_by_xarray_with_every_chunk_reads(image_stores, tmp_path):
    _, truth = image_stores
    path = _plain_store(truth[0], tmp_path / "plain.zarr", write_empty_chunks=True)
    (back,) = daskcal.open_images(path)
    for v in IMAGE_VARS:
        np.testing.assert_array_equal(back[v].values, truth[0][v].values, err_msg=v)


def test_xarray_store_that_skipped_fill_value_chunks_is_refused_unless_declared_sparse(image_stores, tmp_path):
    _, truth = image_stores
    ds = truth[0].copy()
    ds["dq"] = ds["dq"].copy(data=np.zeros(ds["dq"].shape, np.uint32))
    plain = _plain_store(ds, tmp_path / "plain.zarr")  # zarr's default: chunks equal to the fill value are not written
    assert not (plain / "dq" / "c").exists()
    with pytest.raises(ValueError, match=_named(plain, "dq", (0, 0)) + ".*12 of its 12 chunks.*'daskcal:sparse'"):
        daskcal.open_images(plain)
    ds["dq"].attrs["daskcal:sparse"] = True
    sparse = _plain_store(ds, tmp_path / "sparse.zarr")
    (back,) = daskcal.open_images(sparse)
    np.testing.assert_array_equal(back["dq"].values, 0)
    np.testing.assert_array_equal(back["data"].values, ds["data"].values)
