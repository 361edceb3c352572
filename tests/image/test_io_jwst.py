"""open_images on the files JWST users have: ``_cal.fits`` written by stdatamodels, jwst associations.

stdatamodels (JWST's own writer) is the oracle for the file format; the metadata values and the
WCS written through it must come back as written, the pixels as astropy reads them.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

import daskcal
from daskcal.image import _io
from daskcal.image._dataset import get_wcs
from daskcal.image._io import read_association, write_cal_fits

datamodels = pytest.importorskip("stdatamodels.jwst.datamodels")

VARS = {"data": "SCI", "err": "ERR", "dq": "DQ", "var_poisson": "VAR_POISSON", "var_rnoise": "VAR_RNOISE",
        "var_flat": "VAR_FLAT"}
OBSERVATION = {"program_number": "01234", "observation_number": "001", "visit_number": "002", "visit_group": "03",
               "sequence_id": "1", "activity_id": "05", "exposure_number": "00001"}
GROUP = "jw01234001002_03105_00001"  # jwst's group_id of OBSERVATION
WCSINFO = {"ra_ref": 150.1, "dec_ref": 2.2, "v2_ref": 120.6714, "v3_ref": -527.3877, "roll_ref": 295.2,
           "v3yangle": -0.55, "vparity": -1}


def write_jwst(ds, path, *, observation=OBSERVATION, detector="NRCA1", wcs=True):
    """Write an image dataset through stdatamodels' ImageModel, as the jwst pipeline writes a _cal.fits."""
    a = ds.attrs
    model = datamodels.ImageModel(**{v: np.asarray(ds[v].values) for v in VARS})
    if wcs:
        model.meta.wcs = get_wcs(ds)
    model.meta.wcsinfo = dict(WCSINFO)
    model.meta.exposure.exposure_time = a["exposure_time"]
    model.meta.exposure.measurement_time = a["measurement_time"]
    model.meta.exposure.start_time = a["start_time"]
    model.meta.exposure.end_time = a["end_time"] + 1e-3  # not derived from start + exposure time
    model.meta.exposure.duration = a["exposure_time"] + 7.0
    model.meta.background.level = a["level"]
    model.meta.background.subtracted = True
    if observation:
        model.meta.observation = dict(observation)
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = detector
    model.meta.instrument.filter = "F200W"
    model.meta.bunit_data = "MJy/sr"
    model.save(path)
    model.close()
    return path


@pytest.fixture(scope="module")
def sim():
    return daskcal.simulate_images(n=4, shape=(40, 50), seed=5, n_stars=4, cosmic_rays=6)


@pytest.fixture(scope="module")
def jwst_file(sim, tmp_path_factory):
    return write_jwst(sim.images[0], tmp_path_factory.mktemp("jw") / "jw01234001002_03105_00001_nrca1_cal.fits")


def _sky(wcs, shape):
    ny, nx = shape
    y, x = np.mgrid[0:ny:7, 0:nx:7].astype(float)
    return np.array(wcs(x.ravel() + 0.25, y.ravel() - 0.5))


def test_stdatamodels_file_metadata_and_wcs(sim, jwst_file):
    ds = sim.images[0]
    (back,) = daskcal.open_images(jwst_file)
    a = back.attrs
    assert a["name"] == "jw01234001002_03105_00001_nrca1"
    assert a["group_id"] == GROUP
    assert a["wcsinfo"] == WCSINFO
    assert a["observation"] == OBSERVATION
    assert a["instrument"] == {"name": "NIRCAM", "detector": "NRCA1", "filter": "F200W"}
    for key in ("exposure_time", "measurement_time", "start_time", "level"):
        assert a[key] == ds.attrs[key], key
    assert a["end_time"] == ds.attrs["end_time"] + 1e-3
    assert a["duration"] == ds.attrs["exposure_time"] + 7.0
    assert a["subtracted"] is True and a["bunit_data"] == "MJy/sr"
    json.dumps({k: v for k, v in a.items()})  # attributes stay JSON-serialisable (they go to Zarr)
    got, want = _sky(get_wcs(back), ds["data"].shape), _sky(get_wcs(ds), ds["data"].shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_stdatamodels_file_is_read_lazily_by_chunks(sim, jwst_file, monkeypatch):
    reads = []
    section = _io._FitsSection.__getitem__

    def counted(self, key):
        reads.append((self.ext, key))
        return section(self, key)

    monkeypatch.setattr(_io._FitsSection, "__getitem__", counted)
    (back,) = daskcal.open_images([jwst_file], chunks=(16, 32))
    assert reads == []  # opening reads headers and metadata, no pixels
    assert back["data"].data.chunks == ((16, 16, 8), (32, 18))
    data = back["data"].data[20:30, 40:45].compute(scheduler="sync")
    assert [ext for ext, _ in reads] == ["SCI"]  # one read, in the one chunk that holds the slice
    reads.clear()
    back["err"].compute(scheduler="sync")
    chunks = [(slice(y, min(y + 16, 40)), slice(x, min(x + 32, 50))) for y in (0, 16, 32) for x in (0, 32)]
    assert sorted(key for _, key in reads) == chunks  # each chunk read once, by its own task
    assert {ext for ext, _ in reads} == {"ERR"}
    with fits.open(jwst_file) as hdul:
        np.testing.assert_array_equal(data, hdul["SCI"].data[20:30, 40:45])
        for var, ext in VARS.items():
            want = hdul[ext].data
            got = back[var].values
            assert got.dtype == (np.uint32 if var == "dq" else np.float32), var
            np.testing.assert_array_equal(got, want, err_msg=var)
            np.testing.assert_array_equal(got, sim.images[0][var].values, err_msg=var)


def test_array_references_of_the_asdf_tree_are_not_followed(jwst_file, monkeypatch):
    """stdatamodels' tree holds ``data: {source: "fits:SCI,1"}``; only stdatamodels can resolve that (eager
    loading by asdf alone fails with "Resolved to relative URL"). Only the WCS's own blocks may be loaded."""
    from asdf.tags.core.ndarray import NDArrayType

    with fits.open(jwst_file) as hdul:
        assert b"source: fits:SCI,1" in hdul["ASDF"].data["ASDF_METADATA"][0].tobytes()
    sources = []
    make = NDArrayType._make_array

    def recorded(self):
        sources.append(self._source)
        return make(self)

    monkeypatch.setattr(NDArrayType, "_make_array", recorded)
    (back,) = daskcal.open_images(jwst_file)
    assert back.attrs["group_id"] == GROUP
    assert sources and not [s for s in sources if isinstance(s, str)], sources


def test_daskcal_written_file_keeps_opening(sim, tmp_path):
    ds = sim.images[1]
    path = write_cal_fits(ds, tmp_path / "mine_cal.fits")
    (back,) = daskcal.open_images(path, chunks=(7, 9))
    for var in VARS:
        np.testing.assert_array_equal(back[var].values, ds[var].values, err_msg=var)
    assert back.attrs["group_id"] == ds.attrs["group_id"] == "exp1" and back.attrs["name"] == "mine"
    # the writer records the FITS WCS keys in meta.wcsinfo, but no pointing it does not know: the output grid
    # of such a file follows the first input's WCS, not jwst's roll-angle rule
    assert "observation" not in back.attrs
    assert not {"roll_ref", "v3yangle", "vparity"} & set(back.attrs.get("wcsinfo", {}))
    np.testing.assert_allclose(_sky(get_wcs(back), (40, 50)), _sky(get_wcs(ds), (40, 50)), rtol=0, atol=1e-12)


def test_detectors_of_one_exposure_form_one_group(sim, tmp_path):
    second = dict(OBSERVATION, exposure_number="00002")
    paths = [write_jwst(sim.images[0], tmp_path / "e1_nrca1_cal.fits", detector="NRCA1"),
             write_jwst(sim.images[1], tmp_path / "e1_nrca2_cal.fits", detector="NRCA2"),
             write_jwst(sim.images[2], tmp_path / "e2_nrca1_cal.fits", observation=second),
             write_jwst(sim.images[3], tmp_path / "noobs_cal.fits", observation=None)]
    images = daskcal.open_images(paths)
    assert [im.attrs["group_id"] for im in images] == [GROUP, GROUP, "jw01234001002_03105_00002", "noobs"]
    assert [im.attrs["instrument"]["detector"] for im in images] == ["NRCA1", "NRCA2", "NRCA1", "NRCA1"]


def test_association_exptype_group_id_and_product_name(sim, tmp_path, caplog):
    paths = [write_jwst(ds, tmp_path / f"x{k}_cal.fits") for k, ds in enumerate(sim.images[:3])]
    asn = tmp_path / "asn.json"
    asn.write_text(json.dumps({"asn_type": "image3", "asn_id": "a3001", "products": [{
        "name": "jw01234-o001_t001_nircam_clear-f200w",
        "members": [{"expname": "x0_cal.fits", "exptype": "science", "group_id": "mine"},
                    {"expname": "x1_cal.fits", "exptype": "background"},
                    {"expname": "gone_cal.fits", "exptype": "background"},  # not read, so may be absent
                    {"expname": "x2_cal.fits", "exptype": "SCIENCE"}]}]}))
    info = read_association(asn)
    assert info.product_name == "jw01234-o001_t001_nircam_clear-f200w"
    assert [(m.path, m.exptype, m.group_id) for m in info.members] == [
        (paths[0], "science", "mine"), (paths[1], "background", None), (tmp_path / "gone_cal.fits", "background", None),
        (paths[2], "SCIENCE", None)]
    assert [m.path for m in info.science] == [paths[0], paths[2]]
    with caplog.at_level(logging.INFO, logger="daskcal"):
        images = daskcal.open_images(asn)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2 and "x1_cal.fits" in skipped[0] and "'background'" in skipped[0]
    assert [im.attrs["name"] for im in images] == ["x0", "x2"]
    assert [im.attrs["group_id"] for im in images] == ["mine", GROUP]  # the member's group_id overrides
    assert _io.expand_inputs(asn) == [paths[0], paths[2]]


def test_association_bad_members(sim, tmp_path):
    home = tmp_path / "asn"
    home.mkdir()
    write_jwst(sim.images[0], home / "in_cal.fits")
    write_jwst(sim.images[1], tmp_path / "out_cal.fits")
    asn = home / "asn.json"

    def members(*ms):
        asn.write_text(json.dumps({"products": [{"name": "p", "members": list(ms)}]}))
        return asn

    members({"expname": "in_cal.fits", "exptype": "science"}, {"expname": "lost_cal.fits", "exptype": "science"})
    with pytest.raises(FileNotFoundError, match=r"names exposures that do not exist: \[.*lost_cal.fits"):
        daskcal.open_images(asn)
    members({"expname": "in_cal.fits", "exptype": "science"}, {"expname": "../out_cal.fits", "exptype": "science"})
    with pytest.raises(ValueError, match=r"outside its folder .*out_cal.fits.*allow-outside-asn"):
        daskcal.open_images(asn)
    assert len(daskcal.open_images(asn, allow_outside_asn=True)) == 2
    members({"expname": "in_cal.fits", "exptype": "background"})
    with pytest.raises(ValueError, match="has no science members"):
        daskcal.open_images(asn)
    members({"expname": "in_cal.fits", "exptype": "science", "group_id": 5})
    with pytest.raises(ValueError, match="group_id must be a non-empty string; got 5"):
        read_association(asn)


def test_stdatamodels_file_without_wcs(sim, tmp_path):
    path = write_jwst(sim.images[0], tmp_path / "nowcs_cal.fits", wcs=False)
    with pytest.raises(ValueError, match=r"nowcs_cal.fits'?: the ASDF extension has no meta.wcs"):
        daskcal.open_images(path)


# -- command line ---------------------------------------------------------------------------------

cli = pytest.mark.filterwarnings(
    "ignore:Port .* is already in use:UserWarning", "ignore::ResourceWarning", "ignore:unclosed:ResourceWarning")


@pytest.fixture(scope="module")
def asn_dir(tmp_path_factory):
    """Four files written by stdatamodels, three exposures (the first seen by detectors NRCA1 and NRCA2), and
    their association (with a background member, absent)."""
    d = tmp_path_factory.mktemp("asn")
    sim = daskcal.simulate_images(n=4, shape=(48, 56), seed=8, n_stars=5, cosmic_rays=8)
    members = []
    for k, ds in enumerate(sim.images):
        exposure, detector = (1, f"NRCA{k + 1}") if k < 2 else (k, "NRCA1")
        obs = dict(OBSERVATION, exposure_number=f"{exposure:05d}")
        name = f"jw01234001002_03105_{exposure:05d}_{detector.lower()}_cal.fits"
        write_jwst(ds, d / name, observation=obs, detector=detector)
        members.append({"expname": name, "exptype": "science"})
    members.append({"expname": "bkg_cal.fits", "exptype": "background"})
    asn = d / "asn.json"
    asn.write_text(json.dumps({"asn_type": "image3", "products": [{"name": "mosaic", "members": members}]}))
    return d, asn


def _run(*argv):
    from daskcal.cli._main import main

    return main([*map(str, argv), "--workers", "1", "--no-progress"])


@cli
def test_cli_outliers_on_an_association_of_jwst_files(asn_dir, tmp_path, capsys):
    from daskcal.image._outliers import flag_outliers

    _, asn = asn_dir
    images = daskcal.open_images(asn)
    assert [im.attrs["group_id"][-5:] for im in images] == ["00001", "00001", "00002", "00003"]
    expected = flag_outliers(images, tile_shape=(40, 40))
    assert _run("outliers", asn, "-o", tmp_path / "out", "--tile-shape", 40, 40) == 0
    assert "outliers: 4 exposures" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{im.attrs['name']}.zarr" for im in images)
    flagged = 0
    for im, exp in zip(images, expected.images):
        with xr.open_zarr(tmp_path / "out" / f"{im.attrs['name']}.zarr", consolidated=False) as got:
            np.testing.assert_array_equal(got["dq"].values, exp["dq"].values)
            flagged += int(((got["dq"].values & daskcal.DQ.OUTLIER) > 0).sum())
    assert flagged > 0
    expected.cleanup()


@cli
def test_cli_outliers_accepts_cal_fits_paths(asn_dir, tmp_path, capsys):
    d, _ = asn_dir
    paths = sorted(d.glob("jw*_cal.fits"))
    assert _run("outliers", *paths, "-o", tmp_path / "out", "--tile-shape", 40, 40) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"jw01234001002_03105_{k}.zarr" for k in ("00001_nrca1", "00001_nrca2", "00002_nrca1",
                                                                "00003_nrca1")]


@cli
def test_cli_resample_on_an_association_of_jwst_files(asn_dir, tmp_path):
    _, asn = asn_dir
    expected = daskcal.resample(daskcal.open_images(asn), tile_shape=(32, 32)).compute(scheduler="sync")
    assert _run("resample", asn, "-o", tmp_path / "m.zarr", "--tile-shape", 32, 32) == 0
    with xr.open_zarr(tmp_path / "m.zarr", consolidated=False) as got:
        for name in ("data", "wht", "con", "err"):
            np.testing.assert_array_equal(got[name].values, expected[name].values, err_msg=name)


@pytest.mark.parametrize("case", ["missing", "outside", "nowcs"])
def test_cli_bad_association_members_are_one_line(sim, tmp_path, capsys, case):
    home = tmp_path / "asn"
    home.mkdir()
    write_jwst(sim.images[0], home / "a_cal.fits")
    member = {"missing": "lost_cal.fits", "outside": "../b_cal.fits", "nowcs": "nowcs_cal.fits"}[case]
    write_jwst(sim.images[1], tmp_path / "b_cal.fits")
    write_jwst(sim.images[2], home / "nowcs_cal.fits", wcs=False)
    asn = home / "asn.json"
    asn.write_text(json.dumps({"products": [{"name": "p", "members": [
        {"expname": "a_cal.fits", "exptype": "science"}, {"expname": member, "exptype": "science"}]}]}))
    for command in ("outliers", "resample"):
        out = tmp_path / f"{command}.out"
        assert _run(command, asn, "-o", out) == 2
        captured = capsys.readouterr()
        assert "dashboard:" not in captured.out and not out.exists()
        lines = [line for line in captured.err.splitlines() if line.startswith("daskcal ")]
        assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
        assert member.split("/")[-1] in lines[0], lines[0]


def test_cli_outliers_refuses_to_overwrite_association_members(tmp_path, capsys):
    sim = daskcal.simulate_images(n=2, shape=(32, 32), seed=3, n_stars=3)
    # outliers names its products after the exposures: here, the member stores themselves
    stores = [daskcal.save(ds, tmp_path / f"{ds.attrs['name']}.zarr") for ds in sim.images]
    asn = tmp_path / "asn.json"
    asn.write_text(json.dumps({"products": [{"members": [{"expname": s.name} for s in stores]}]}))
    assert _run("outliers", asn, "-o", tmp_path, "--overwrite") == 2
    captured = capsys.readouterr()
    assert "is the input" in captured.err and "dashboard" not in captured.out


def test_wcs_of_an_extension_not_installed_is_named(sim, tmp_path):
    """A WCS holding a tag no installed asdf extension converts (JWST's transforms without stdatamodels)."""
    from asdf.tagged import TaggedDict

    good = write_cal_fits(sim.images[0], tmp_path / "good_cal.fits")
    tag = "tag:stsci.edu:jwst_pipeline/not_installed-1.0.0"
    with fits.open(good) as hdul:
        hdus = fits.HDUList([h.copy() for h in hdul])
    hdus["ASDF"] = _io._asdf_hdu({"meta": {"wcs": TaggedDict({"steps": []}, tag),
                                           "exposure": {"exposure_time": 100.0}}})
    hdus.writeto(tmp_path / "alien_cal.fits")
    with pytest.raises(ValueError, match=rf"alien_cal.fits': the WCS is a TaggedDict \(asdf could not convert it: "
                                         rf"{tag} is not recognized.*needs? stdatamodels"):
        daskcal.open_images(tmp_path / "alien_cal.fits")


def test_group_id_from_primary_header_keywords(sim, tmp_path):
    """A file whose ASDF tree has no meta.observation nor meta.group_id: jwst's keywords in the primary header."""
    good = write_cal_fits(sim.images[0], tmp_path / "good_cal.fits")
    with fits.open(good) as hdul:
        hdus = fits.HDUList([h.copy() for h in hdul])
    hdus["ASDF"] = _io._asdf_hdu({"meta": {"wcs": get_wcs(sim.images[0]), "exposure": {"exposure_time": 100.0}}})
    del hdus[0].header["GROUP_ID"]  # write_cal_fits's own group id
    for field, keyword in _io._OBSERVATION_KEYS:
        hdus[0].header[keyword] = OBSERVATION[field]
    hdus.writeto(tmp_path / "kw_cal.fits")
    del hdus[0].header["EXPOSURE"]
    hdus.writeto(tmp_path / "kw6_cal.fits")
    images = daskcal.open_images([tmp_path / "kw_cal.fits", tmp_path / "kw6_cal.fits"])
    assert [im.attrs["group_id"] for im in images] == [GROUP, "kw6"]  # all seven values, or the name


def test_metadata_survives_a_zarr_store(jwst_file, tmp_path):
    (ds,) = daskcal.open_images(jwst_file)
    daskcal.save(ds, tmp_path / "x.zarr")
    (back,) = daskcal.open_images(tmp_path / "x.zarr")
    for key in ("wcsinfo", "observation", "instrument", "group_id", "name", "exposure_time", "subtracted"):
        assert back.attrs[key] == ds.attrs[key], key
