"""Products carry consolidated metadata: ``xr.open_zarr(path)`` (consolidated=None) opens them
without "Failed to open Zarr store with consolidated metadata" and reads what was written."""

import warnings

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from daskcal.io._atomic import save_dataset, save_products


def _dataset(seed):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(2, 30, 20)).astype("float32")
    return xr.Dataset(
        {"data": (("integration", "y", "x"), da.from_array(data, chunks=(2, 16, 8))),
         "dq": (("y", "x"), rng.integers(0, 8, (30, 20)).astype("uint32"))},
        attrs={"name": f"seed{seed}"},
    )


def _open_quietly(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path)


def test_save_dataset_and_save_products_write_consolidated_metadata(tmp_path):
    one = save_dataset(_dataset(1), tmp_path / "one.zarr")
    paths = save_products({"a": _dataset(2), "b": _dataset(3)}, tmp_path / "out")
    for path, seed in ((one, 1), (paths["a"], 2), (paths["b"], 3)):
        meta = zarr.open_consolidated(path, zarr_format=3).metadata.consolidated_metadata
        assert set(meta.metadata) >= {"data", "dq"}
        with _open_quietly(path) as got:
            want = _dataset(seed)
            np.testing.assert_array_equal(got["data"].values, want["data"].values)
            np.testing.assert_array_equal(got["dq"].values, want["dq"].values)
            assert got.attrs["name"] == f"seed{seed}"


def test_a_mosaic_with_unwritten_tiles_is_consolidated(tmp_path):
    from daskcal import resample
    from daskcal.image._simulate import simulate_images
    from daskcal.io._atomic import write_zarr
    from daskcal.io._outputs import OutputSet

    images = simulate_images(2, shape=(64, 64), seed=3).images
    mosaic = resample(images, tile_shape=(32, 32))
    out = tmp_path / "mosaic.zarr"
    with OutputSet([out]) as outputs:
        write_zarr(mosaic, outputs.path(out))
        outputs.commit()
    with _open_quietly(out) as got:
        np.testing.assert_array_equal(got["data"].values, mosaic["data"].values)
