"""detector1 on ramps with NaN / infinite samples: those groups are DO_NOT_USE, never fitted."""

import dask
import numpy as np
import pytest

import daskcal
from daskcal.detector._pipeline import detector1, detector1_steps
from daskcal.dq import DQ
from daskcal.testing import simulate, stcal_detector1

NAMES = ("data", "err", "dq", "var_poisson", "var_rnoise")
WHOLE = {(5, 7): np.nan, (10, 11): np.inf, (33, 40): -np.inf}  # every sample of the pixel


def _inject(ramps):
    """``ramps`` with non-finite samples at known places; also the same ramps with those
    samples finite but flagged DO_NOT_USE in groupdq (the oracle's input)."""
    data = ramps["data"].values.copy()
    gdq = ramps["groupdq"].values.copy()
    for (y, x), v in WHOLE.items():
        data[:, :, y, x] = v
    data[0, 3, 20, 21] = np.nan  # one sample
    data[1, :, 30, 31] = np.inf  # one integration
    data[1, 0, 2, 44] = -np.inf  # first group
    bad = ~np.isfinite(data)
    flagged = gdq | np.where(bad, np.uint8(DQ.DO_NOT_USE), np.uint8(0))
    with_nan = ramps.copy()
    with_nan["data"] = (ramps["data"].dims, data)
    oracle = ramps.copy()
    oracle["groupdq"] = (ramps["groupdq"].dims, flagged)
    return with_nan, oracle, bad.any(axis=(0, 1))


@pytest.fixture(scope="module")
def case():
    sim = simulate((2, 6, 48, 56), seed=5, cr_probability=2e-3)
    return sim.ramps.load(), *_inject(sim.ramps.load())


@pytest.mark.parametrize("run", [detector1, detector1_steps])
def test_nonfinite_samples_are_do_not_use_groups(case, run):
    clean, with_nan, oracle, bad = case
    result = run(with_nan, chunks=(16, 24))
    rate, rateints, n = dask.compute(result.rate, result.rateints, result.n_nonfinite)
    assert int(n) == bad.sum() == 6
    # pixels with no finite sample: NaN rate, DO_NOT_USE, zero variances (stcal's unusable pixel)
    for y, x in WHOLE:
        assert np.isnan(rate["data"].values[y, x])
        assert rate["dq"].values[y, x] == DQ.DO_NOT_USE  # not SATURATED / AD_FLOOR
        assert rate["err"].values[y, x] == 0 and rate["var_rnoise"].values[y, x] == 0
    # every pixel equals stcal's chain given the same samples flagged DO_NOT_USE
    ref_rate, ref_ints = stcal_detector1(oracle)
    for ds, ref in ((rate, ref_rate), (rateints, ref_ints)):
        for name in NAMES:
            np.testing.assert_allclose(ds[name].values, ref[name], rtol=1e-4, atol=1e-7, err_msg=name)
    # the other pixels are what a run without the injected samples gives
    plain = detector1(clean, chunks=(16, 24)).rate.compute()
    for name in NAMES:
        np.testing.assert_array_equal(rate[name].values[~bad], plain[name].values[~bad], err_msg=name)


def test_fit_ramps_alone_counts_nonfinite_pixels(case):
    _, with_nan, _, bad = case
    assert int(daskcal.fit_ramps(with_nan).n_nonfinite.compute()) == bad.sum()


def test_clean_ramps_count_no_nonfinite_pixel(case):
    clean = case[0]
    assert int(detector1(clean).n_nonfinite.compute()) == 0


def test_the_count_shares_the_fit_with_the_writes(case, tmp_path, monkeypatch):
    """Computed with the writes, the count reuses their fit tasks: one fit per chunk."""
    from distributed import Client, LocalCluster

    import daskcal.detector._fused as fused
    from daskcal.io._atomic import save_products

    calls = []
    real = fused.fit_block

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fused, "fit_block", counting)
    _, with_nan, _, bad = case
    result = detector1(with_nan, chunks=(16, 28))  # 3 x 2 chunks
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            Client(cluster):
        paths, (n,) = save_products({"rate": result.rate, "rateints": result.rateints}, tmp_path / "out",
                                    also=(result.n_nonfinite,))
        assert n == bad.sum() and set(paths) == {"rate", "rateints"}
    assert len(calls) == 6
