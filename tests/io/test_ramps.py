import numpy as np
import pytest
import xarray as xr

from daskcal import DQ, ingest, open_ramps, save, simulate, to_fits
from daskcal.io import atomic_path
from daskcal.io._ramps import write_uncal


@pytest.fixture(scope="module")
def sim():
    return simulate((2, 4, 30, 44), seed=11)


def test_fits_round_trip_through_ingest(sim, tmp_path):
    files = write_uncal(sim.ramps, tmp_path / "expo_uncal.fits")
    ds = ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"],
                saturation=files["saturation"], superbias=files["superbias"],
                out=tmp_path / "expo.zarr", chunks=(16, 16))
    assert ds["data"].chunks == ((2,), (4,), (16, 14), (16, 16, 12))
    for name in ("data", "groupdq", "pixeldq", "gain", "readnoise", "saturation", "superbias"):
        np.testing.assert_array_equal(ds[name].values, sim.ramps[name].values)
        assert ds[name].dtype == sim.ramps[name].dtype
    for key in ("group_time", "frame_time", "nframes", "groupgap"):
        assert ds.attrs[key] == sim.ramps.attrs[key]
    assert "instrument" not in ds.attrs


def test_ingest_reads_the_instrument(sim, tmp_path):
    ramps = sim.ramps.copy()
    ramps.attrs = dict(sim.ramps.attrs, instrument="MIRI")
    files = write_uncal(ramps, tmp_path / "miri_uncal.fits")
    ds = ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"], saturation=files["saturation"])
    assert ds.attrs["instrument"] == "MIRI"


def test_saturation_reference_dq_contributes_no_sat_check(sim, tmp_path):
    from astropy.io import fits

    files = write_uncal(sim.ramps, tmp_path / "e_uncal.fits")
    sat_dq = np.zeros(sim.ramps["gain"].shape, np.uint32)
    sat_dq[3, 5] = DQ.NO_SAT_CHECK | DQ.DO_NOT_USE
    with fits.open(files["saturation"], mode="append") as hdul:
        hdul.append(fits.ImageHDU(sat_dq, name="DQ"))
    ds = ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"], saturation=files["saturation"])
    pdq = ds["pixeldq"].values
    assert pdq[3, 5] & DQ.NO_SAT_CHECK
    assert not pdq[3, 5] & DQ.DO_NOT_USE  # only NO_SAT_CHECK is carried over at once ...
    np.testing.assert_array_equal(ds["saturation_dq"].values, sat_dq)  # ... the rest by the saturation step
    assert "superbias" not in ds and "zeroframe" not in ds


def test_zeroframe_round_trip_through_ingest(sim, tmp_path):
    from astropy.io import fits

    zf = sim.ramps["data"].values[:, 0] - 100.0
    files = write_uncal(sim.ramps.assign(zeroframe=(("integration", "y", "x"), zf)), tmp_path / "z_uncal.fits")
    ds = ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"], saturation=files["saturation"])
    np.testing.assert_array_equal(ds["zeroframe"].values, zf)
    assert ds["zeroframe"].dims == ("integration", "y", "x")
    with fits.open(files["uncal"], mode="update") as hdul:
        hdul["ZEROFRAME"].data = hdul["ZEROFRAME"].data[:1]
    with pytest.raises(ValueError, match="ZEROFRAME has shape"):
        ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"], saturation=files["saturation"])


def test_ingest_names_what_is_missing(sim, tmp_path):
    from astropy.io import fits

    files = write_uncal(sim.ramps, tmp_path / "m_uncal.fits")
    with fits.open(files["uncal"], mode="update") as hdul:
        del hdul[0].header["TGROUP"]
    with pytest.raises(ValueError, match="TGROUP"):
        ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"], saturation=files["saturation"])
    small = tmp_path / "small_gain.fits"
    fits.HDUList([fits.PrimaryHDU(np.ones((3, 3), np.float32))]).writeto(small)
    files = write_uncal(sim.ramps, tmp_path / "n_uncal.fits")
    with pytest.raises(ValueError, match=r"gain reference .* shape \(3, 3\)"):
        ingest(files["uncal"], gain=small, readnoise=files["readnoise"], saturation=files["saturation"])


def test_ingest_reads_the_cube_one_chunk_per_task(sim, tmp_path):
    """An integer SCI cube (stored as int16 with BZERO, as JWST's uncal files are) is read by
    one task per (y, x) chunk, each reading only its region; the file is left as it was."""
    import hashlib

    from astropy.io import fits

    files = write_uncal(sim.ramps, tmp_path / "u_uncal.fits")
    counts = np.clip(np.round(sim.ramps["data"].values), 0, 65535).astype(np.uint16)
    with fits.open(files["uncal"], mode="update") as hdul:
        hdul["SCI"].data = counts
    with fits.open(files["uncal"]) as hdul:
        assert hdul["SCI"].header["BITPIX"] == 16 and hdul["SCI"].header["BZERO"] == 32768
    digest = hashlib.sha256(files["uncal"].read_bytes()).hexdigest()
    ds = ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"],
                saturation=files["saturation"], chunks=(16, 16))
    data = ds["data"].data
    reads = {k: v for k, v in dict(data.__dask_graph__()).items() if k[0].startswith("fits-read-sci")}
    assert len(reads) == 2 * 3 == data.npartitions
    regions = sorted(tuple((r.start, r.stop) for r in task[3][2:]) for task in reads.values())  # (func, path, ext, region, dtype)
    assert regions[0] == ((0, 16), (0, 16)) and regions[-1] == ((16, 30), (32, 44))
    np.testing.assert_array_equal(ds["data"].values, counts.astype(np.float32))
    assert ds["data"].dtype == np.float32
    np.testing.assert_array_equal(ds["groupdq"].values, sim.ramps["groupdq"].values)
    ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"], saturation=files["saturation"],
           out=tmp_path / "u.zarr")
    assert hashlib.sha256(files["uncal"].read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("layout", ["bscale", "blank", "compressed"])
def test_fits_regions_equal_astropy_reads(tmp_path, layout):
    """Scaled cubes are read by bands here; BLANK and tile-compressed ones through astropy's section."""
    from astropy.io import fits

    from daskcal.io._ramps import _fits_cube, _plain_image

    raw = np.random.default_rng(1).integers(-3000, 3000, size=(2, 3, 37, 41)).astype(np.int16)
    if layout == "compressed":
        hdu = fits.CompImageHDU(raw, name="SCI")
    else:
        hdu = fits.ImageHDU(raw, name="SCI")
        hdu.scale("int16", bscale=0.5, bzero=7.25) if layout == "bscale" else None
        if layout == "blank":
            hdu.header["BLANK"] = -3000
    path = tmp_path / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    with fits.open(path) as hdul:
        want = np.asarray(hdul["SCI"].data, dtype=np.float32)
        assert (_plain_image(hdul["SCI"]) is None) == (layout != "bscale")
    got = _fits_cube(path, "SCI", want.shape, np.float32, (16, 16)).compute()
    np.testing.assert_allclose(got, want, rtol=1e-7, equal_nan=True)


@pytest.mark.parametrize("ext", ["GROUPDQ", "PIXELDQ"])
def test_ingest_names_a_dq_extension_of_the_wrong_shape(sim, tmp_path, ext):
    from astropy.io import fits

    files = write_uncal(sim.ramps, tmp_path / "d_uncal.fits")
    with fits.open(files["uncal"], mode="update") as hdul:
        hdul[ext].data = hdul[ext].data[..., :-1]
    with pytest.raises(ValueError, match=f"{ext} has shape"):
        ingest(files["uncal"], gain=files["gain"], readnoise=files["readnoise"], saturation=files["saturation"])


def test_open_ramps_rechunks_in_pixels_only(sim, tmp_path):
    save(sim.ramps.chunk({"integration": 1, "group": 2, "y": 10, "x": 10}), tmp_path / "r.zarr")
    ds = open_ramps(tmp_path / "r.zarr", chunks=(8, 9))
    assert ds["data"].chunks[:2] == ((2,), (4,))
    assert ds["data"].chunks[2:] == ((8, 8, 8, 6), (9, 9, 9, 9, 8))
    np.testing.assert_array_equal(ds["data"].values, sim.ramps["data"].values)


def test_open_ramps_refuses_what_is_not_a_ramp_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_ramps(tmp_path / "nothing.zarr")
    save(xr.Dataset({"data": (("y", "x"), np.zeros((3, 3), np.float32))}), tmp_path / "img.zarr")
    with pytest.raises(ValueError, match=r"data must have dimensions \('integration', 'group', 'y', 'x'\)"):
        open_ramps(tmp_path / "img.zarr")


def test_failed_write_leaves_no_product(tmp_path):
    target = tmp_path / "out.zarr"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_replaced_without_overwrite(sim, tmp_path):
    save(sim.truth, tmp_path / "t.zarr")
    with pytest.raises(FileExistsError, match="overwrite"):
        save(sim.truth, tmp_path / "t.zarr")
    save(sim.truth, tmp_path / "t.zarr", overwrite=True)


def test_rate_product_exports_to_fits(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(0)
    rate = xr.Dataset({
        "data": (("y", "x"), rng.random((4, 5), dtype=np.float32)),
        "err": (("y", "x"), rng.random((4, 5), dtype=np.float32)),
        "dq": (("y", "x"), np.arange(20, dtype=np.uint32).reshape(4, 5)),
        "var_poisson": (("y", "x"), rng.random((4, 5), dtype=np.float32)),
        "var_rnoise": (("y", "x"), rng.random((4, 5), dtype=np.float32)),
    })
    path = to_fits(rate, tmp_path / "rate.fits")
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["SCI"].data, rate["data"].values)
        np.testing.assert_array_equal(hdul["DQ"].data, rate["dq"].values)
        assert hdul["SCI"].header["BUNIT"] == "DN/s"
    with pytest.raises(ValueError, match="var_rnoise"):
        to_fits(rate.drop_vars("var_rnoise"), tmp_path / "bad.fits")


def test_to_fits_dispatches_on_the_product(tmp_path):
    from astropy.io import fits

    import daskcal

    sim = daskcal.simulate_images(2, (40, 50), seed=3)
    mosaic = daskcal.resample(sim.images)
    path = daskcal.to_fits(mosaic, tmp_path / "m_i2d.fits")
    with fits.open(path) as hdul:
        assert "WHT" in hdul and "CON" in hdul
        np.testing.assert_allclose(hdul["WHT"].data, mosaic["wht"].values)
