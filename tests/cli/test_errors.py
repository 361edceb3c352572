"""What the command line says about bad input: one line naming the file and what was expected, exit 2."""

import logging

import numpy as np
import pytest
import xarray as xr

from daskcal.cli import main


def _one_line_error(err, *needles):
    """The one ``daskcal COMMAND: error: ...`` line of ``err`` (no traceback), containing every needle."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("daskcal ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_detector1_warns_with_the_count_of_nonfinite_pixels(tmp_path, capsys, caplog):
    from daskcal import save, simulate

    ramps = simulate((1, 5, 30, 26), seed=3).ramps.load()
    data = ramps["data"].values.copy()
    data[:, :, 4, 5] = np.nan
    data[0, 2, 9, 9] = np.inf
    ramps["data"] = (ramps["data"].dims, data)
    store = tmp_path / "nan.zarr"
    save(ramps, store)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="daskcal"):
        assert main(["detector1", str(store), str(out), "--workers", "1", "--no-progress"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert len(warnings) == 1 and str(store) in warnings[0] and " 2 pixels" in warnings[0]
    with xr.open_zarr(out / "rate.zarr", consolidated=False) as rate:
        assert np.isnan(rate["data"].values[4, 5]) and rate["dq"].values[4, 5] == 1
        assert np.isfinite(rate["data"].values[9, 9]) and rate["dq"].values[9, 9] == 0


# ------------------------------------------------------------------ image inputs

@pytest.fixture(scope="module")
def cal_files(tmp_path_factory):
    """Two good _cal.fits files, and a function that writes a damaged copy of the first."""
    from astropy.io import fits

    from daskcal import simulate_images
    from daskcal.image._io import write_cal_fits

    d = tmp_path_factory.mktemp("cal")
    sim = simulate_images(2, (40, 48), seed=2)
    good = [write_cal_fits(im, d / f"good{i}_cal.fits") for i, im in enumerate(sim.images)]

    def damaged(name, change):
        with fits.open(good[0]) as hdul:
            hdus = fits.HDUList([h.copy() for h in hdul])
        change(hdus)
        path = d / name
        hdus.writeto(path, overwrite=True)
        return path

    return good, damaged, sim


def _asdf_ext(tree):
    from daskcal.image._io import _asdf_hdu

    return _asdf_hdu(tree)


def _resample(capsys, tmp_path, *inputs, extra=()):
    code = main(["resample", *map(str, inputs), "-o", str(tmp_path / "m.zarr"), "--workers", "1", "--no-progress",
                 *extra])
    assert code == 2
    out, err = capsys.readouterr()
    assert "dashboard:" not in out  # refused before a cluster was started
    assert not (tmp_path / "m.zarr").exists()
    return err


def test_cal_fits_without_dq(cal_files, tmp_path, capsys):
    good, damaged, _ = cal_files

    def drop_dq(h):
        del h["DQ"]

    bad = damaged("nodq_cal.fits", drop_dq)
    _one_line_error(_resample(capsys, tmp_path, bad, good[1]), str(bad), "no DQ extension")


def test_cal_fits_with_a_wcs_that_is_not_gwcs(cal_files, tmp_path, capsys):
    good, damaged, _ = cal_files

    def int_wcs(h):
        h["ASDF"] = _asdf_ext({"meta": {"wcs": 5, "exposure": {"exposure_time": 100.0}}})

    bad = damaged("intwcs_cal.fits", int_wcs)
    _one_line_error(_resample(capsys, tmp_path, bad, good[1]), str(bad), "expected a gwcs.WCS")


def test_cal_fits_with_nan_wcs_parameters(cal_files, tmp_path, capsys):
    import copy

    from daskcal import get_wcs

    good, damaged, sim = cal_files
    wcs = copy.deepcopy(get_wcs(sim.images[0]))
    fwd = wcs.forward_transform
    names = [n for n in fwd.param_names if n.startswith(("lon", "lat"))]
    assert names
    for name in names:
        setattr(fwd, name, np.nan)

    def nan_wcs(h):
        h["ASDF"] = _asdf_ext({"meta": {"wcs": wcs, "exposure": {"exposure_time": 100.0}}})

    bad = damaged("nanwcs_cal.fits", nan_wcs)
    _one_line_error(_resample(capsys, tmp_path, bad, good[1]), str(bad), "non-finite sky coordinates")


def test_cal_fits_whose_asdf_extension_is_not_asdf(cal_files, tmp_path, capsys):
    from astropy.io import fits

    from daskcal.image._io import ASDF_COLUMN

    good, damaged, _ = cal_files

    def garbage(h):
        raw = np.frombuffer(b"not asdf at all!" * 4, np.uint8)
        col = fits.Column(name=ASDF_COLUMN, format=f"{raw.size}B", array=raw[None, :])
        h["ASDF"] = fits.BinTableHDU.from_columns([col], name="ASDF")

    bad = damaged("garbage_cal.fits", garbage)
    _one_line_error(_resample(capsys, tmp_path, bad, good[1]), str(bad), "not readable ASDF")


def test_output_wcs_file_that_is_not_asdf(cal_files, tmp_path, capsys):
    good, _, _ = cal_files
    not_asdf = tmp_path / "grid.asdf"
    not_asdf.write_text("hello\n")
    err = _resample(capsys, tmp_path, *good, extra=("--output-wcs", str(not_asdf)))
    _one_line_error(err, str(not_asdf), "not readable ASDF")


def test_empty_image(cal_files, tmp_path, capsys):
    from astropy.io import fits

    good, damaged, _ = cal_files

    def empty(h):
        for ext in ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"):
            if ext in h:
                h[ext] = fits.ImageHDU(np.zeros((0, 0), h[ext].data.dtype), name=ext)

    bad = damaged("empty_cal.fits", empty)
    _one_line_error(_resample(capsys, tmp_path, bad, good[1]), str(bad), "at least one pixel")


def test_empty_image_zarr(cal_files, tmp_path, capsys):
    from daskcal import save

    good, _, sim = cal_files
    store = tmp_path / "empty.zarr"
    save(sim.images[0].isel(y=slice(0, 0), x=slice(0, 0)), store)
    _one_line_error(_resample(capsys, tmp_path, store, good[1]), str(store), "at least one pixel")


# ------------------------------------------------------------------ ramps and options

def test_empty_ramps(tmp_path, capsys):
    from daskcal import save, simulate

    store = tmp_path / "empty.zarr"
    save(simulate((1, 4, 8, 8)).ramps.isel(y=slice(0, 0), x=slice(0, 0)), store)
    assert main(["detector1", str(store), str(tmp_path / "o"), "--workers", "1", "--no-progress"]) == 2
    _one_line_error(capsys.readouterr().err, str(store), "expected at least one integration, group and pixel")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["simulate", "detector1"])
def test_chunks_must_be_positive(command, tmp_path, capsys):
    store = tmp_path / "r.zarr"
    assert main(["simulate", str(store), "--shape", "1", "4", "16", "16"]) == 0
    capsys.readouterr()
    args = {"simulate": ["simulate", str(tmp_path / "s.zarr"), "--shape", "1", "4", "16", "16"],
            "detector1": ["detector1", str(store), str(tmp_path / "o"), "--workers", "1", "--no-progress"]}[command]
    assert main([*args, "--chunks", "-5", "0"]) == 2
    _one_line_error(capsys.readouterr().err, "--chunks must be two positive integers", "-5 0")


def test_library_chunks_must_be_positive():
    import daskcal

    ramps = daskcal.simulate((1, 4, 16, 16)).ramps
    with pytest.raises(ValueError, match=r"chunks must be two positive integers .* got \(-5, 0\)"):
        daskcal.detector1(ramps, chunks=(-5, 0))
    with pytest.raises(TypeError, match="chunks must be two integers"):
        daskcal.detector1(ramps, chunks=(8.5, 8))


# ------------------------------------------------------------------ which failures are one line

def _fail_with(monkeypatch, exc):
    import daskcal.cli._simulate as sim

    def boom(args):
        raise exc

    monkeypatch.setattr(sim, "_main", boom)


def test_os_error_about_a_file_is_one_line(monkeypatch, tmp_path, capsys):
    _fail_with(monkeypatch, PermissionError(13, "Permission denied", str(tmp_path / "locked.zarr")))
    assert main(["simulate", "x.zarr"]) == 2
    _one_line_error(capsys.readouterr().err, "Permission denied", str(tmp_path / "locked.zarr"))


def test_import_error_we_wrote_is_one_line(monkeypatch, capsys):
    _fail_with(monkeypatch, ImportError("--cluster slurm needs dask-jobqueue; pip install dask-jobqueue"))
    assert main(["simulate", "x.zarr"]) == 2
    _one_line_error(capsys.readouterr().err, "needs dask-jobqueue")


@pytest.mark.parametrize("exc", [ModuleNotFoundError("No module named 'nope'", name="nope"), KeyError("bug"),
                                 AttributeError("'int' object has no attribute 'bounding_box'")])
def test_unexpected_failures_keep_their_traceback(monkeypatch, exc):
    _fail_with(monkeypatch, exc)
    with pytest.raises(type(exc)):
        main(["simulate", "x.zarr"])


def test_association_outside_its_folder_needs_the_flag(cal_files, tmp_path, capsys):
    import json

    good, _, _ = cal_files
    asn = tmp_path / "asn.json"
    asn.write_text(json.dumps({"products": [{"members": [{"expname": str(g)} for g in good]}]}))
    err = _resample(capsys, tmp_path, asn)
    _one_line_error(err, str(asn), "outside its folder", "--allow-outside-asn")
    assert main(["resample", str(asn), "-o", str(tmp_path / "m.zarr"), "--workers", "1", "--no-progress",
                 "--allow-outside-asn"]) == 0
    assert (tmp_path / "m.zarr").exists()
