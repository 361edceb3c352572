"""What the command line says about bad input: one line naming the file and what was expected, exit 2."""

import logging

import numpy as np
import xarray as xr

from daskcal.cli import main


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
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
