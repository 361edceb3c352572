"""Warnings naming the exposures that add nothing (or zero-weight pixels) to a mosaic or median."""

import copy
import logging

import numpy as np
import pytest

import daskcal
from daskcal.dq import DQ
from daskcal.image._dataset import WCS_ATTR, get_wcs, wcs_to_text


@pytest.fixture(scope="module")
def sim():
    return daskcal.simulate_images(n=4, shape=(60, 70), seed=4)


def _with(ds, **arrays):
    out = ds.copy()
    for name, arr in arrays.items():
        out[name] = (("y", "x"), arr)
    return out


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("daskcal")]


def test_clean_inputs_give_no_warning(sim, caplog):
    with caplog.at_level(logging.WARNING, logger="daskcal"):
        daskcal.resample(sim.images, tile_shape=(40, 40))
    assert _warnings(caplog) == []


@pytest.mark.parametrize("chunks", [None, {"y": 16, "x": 23}])
def test_all_do_not_use_and_nan_var_rnoise_are_named(sim, caplog, chunks):
    """Counts over every chunk (one task per chunk counts its pixels; ragged chunks of 16 x 23 too)."""
    ims = list(sim.images)
    shape = ims[0]["data"].shape
    names = [im.attrs["name"] for im in ims]
    ims[1] = _with(ims[1], dq=np.full(shape, int(DQ.DO_NOT_USE), np.uint32))
    var = ims[2]["var_rnoise"].values.copy()
    var[3:5, 10:14] = np.nan  # 8 pixels, across a chunk edge with 16 x 23 chunks
    var[7, 7] = 0.0
    var[20, 30] = np.nan  # and one more, on a DO_NOT_USE pixel: not counted
    dq = ims[2]["dq"].values.copy()
    dq[20, 30] |= int(DQ.DO_NOT_USE)
    ims[2] = _with(ims[2], var_rnoise=var, dq=dq)
    ims[3] = _with(ims[3], var_rnoise=np.full(shape, np.nan, np.float32))
    if chunks:
        ims = [im.chunk(chunks) for im in ims]
    with caplog.at_level(logging.WARNING, logger="daskcal"):
        mosaic = daskcal.resample(ims, tile_shape=(40, 40))
    got = _warnings(caplog)
    assert len(got) == 3, got
    assert names[1] in got[0] and "no pixel passes good_bits" in got[0] and "contributes nothing" in got[0]
    assert names[2] in got[1] and "at 9 of its" in got[1]
    assert names[3] in got[2] and "contributes nothing" in got[2]
    # what the warnings say is what happens: inputs 1 and 3 have no bit in the context planes
    con = np.bitwise_or.reduce(mosaic["con"].values.reshape(-1))
    assert [(con >> k) & 1 for k in range(4)] == [1, 0, 1, 0]
    # the outlier step warns the same way
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskcal"):
        daskcal.flag_outliers(ims).cleanup()
    got = _warnings(caplog)
    assert len(got) == 3 and "the median" in got[0]


def test_exposure_off_the_output_grid_is_named(sim, caplog):
    ims = list(sim.images)
    grid = daskcal.output_wcs(ims[:1])
    far = daskcal.simulate_images(n=1, shape=(60, 70), seed=9).images[0]
    w = copy.deepcopy(get_wcs(far))
    fwd = w.forward_transform
    lon = [n for n in fwd.param_names if n.startswith("lon")][0]
    setattr(fwd, lon, getattr(fwd, lon).value + 10.0)  # 10 degrees away
    far = far.assign_attrs({WCS_ATTR: wcs_to_text(w), "name": "far_away"})
    with caplog.at_level(logging.WARNING, logger="daskcal"):
        daskcal.resample([*ims, far], output_wcs=grid, tile_shape=(40, 40))
    got = _warnings(caplog)
    assert len(got) == 1 and "'far_away' does not overlap the output grid" in got[0]
