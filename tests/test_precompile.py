"""Compiling a run's kernels in the driver: the console line, the cache the workers reuse."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap

import dask
import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

import daskcal
from daskcal._precompile import precompile
from daskcal._simulate import simulate
from daskcal.detector import (
    _kernels_jump,
    _kernels_likely,
    _kernels_ramp_fit,
    _kernels_saturation,
    _kernels_sort,
)
from daskcal.detector._fused import compile_kernels
from daskcal.detector._pipeline import detector1
from daskcal.image._dataset import get_wcs
from daskcal.image._pixmap import compile_pixel_map
from daskcal.image._warm_up import _tiny_wcs, compile_outlier_kernels, compile_resample_kernels

LINE = "compiling numba kernels (first run in this environment"


def _run(args, cache_dir, cwd):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
                          check=False)


def test_line_only_when_numba_compiles(tmp_path):
    # a kernel module of its own, so the test compiles one tiny function, not daskcal's kernels
    (tmp_path / "tinykernel.py").write_text(textwrap.dedent("""
        from numba import njit

        @njit(cache=True)
        def twice(x):
            return 2.0 * x
    """))
    script = ("from daskcal._precompile import precompile\nimport tinykernel\n"
              "p = precompile(lambda: tinykernel.twice(1.5), estimate=3)\np.wait()\nprint(p.compiled)")
    cache = tmp_path / "numba-cache"
    first = _run(["-c", script], cache, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(LINE) == 1 and "~3 s)..." in first.stderr
    assert first.stdout.split() == ["True"]
    assert any(cache.rglob("*.nbi"))  # written to NUMBA_CACHE_DIR
    second = _run(["-c", script], cache, tmp_path)
    assert second.returncode == 0, second.stderr
    assert LINE not in second.stderr
    assert second.stdout.split() == ["False"]


IMPORTED_BEFORE_THREAD = """
import sys
seen = []
def look():
    mod = sys.modules.get("distributed")
    seen.append(mod is not None and not getattr(mod.__spec__, "_initializing", False))
{start}
print(seen)
"""


@pytest.mark.parametrize("start", [
    "from daskcal._precompile import precompile\nprecompile(look, estimate=1).wait()",
    ("import argparse\nfrom daskcal.cli._common import ClusterStart\n"
     "class Start(ClusterStart):\n    def _connect(self):\n        look()\n"
     "with Start(argparse.Namespace(cluster='local')) as c:\n    c.client()"),
], ids=["precompile", "cluster-start"])
def test_background_threads_start_with_distributed_imported(start):
    """A warm-up's dask.compute and the cluster start both import distributed; in two threads at once,
    CPython can hand one a partially initialised module ("cannot import name 'Server' from partially
    initialized module 'distributed.core'": seen in CI when dask_jobqueue was imported during image3's
    warm-up). The calling thread imports it before the thread starts, in a fresh interpreter."""
    code = IMPORTED_BEFORE_THREAD.format(start=start)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[True]", done.stdout + done.stderr


def test_failed_warm_up_is_a_warning(caplog):
    def broken():
        msg = "no such kernel"
        raise ValueError(msg)

    stream = io.StringIO()
    with caplog.at_level(logging.WARNING, logger="daskcal._precompile"):
        precompile(broken, estimate=1, stream=stream).wait()
    assert "could not compile the numba kernels ahead of the run (ValueError: no such kernel)" in caplog.text
    assert stream.getvalue() == ""  # nothing compiled, nothing said


def test_interrupted_warm_up_is_raised():
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        precompile(interrupted, estimate=1).wait()


def _signatures():
    modules = (_kernels_jump, _kernels_likely, _kernels_ramp_fit, _kernels_saturation, _kernels_sort)
    return {(m.__name__, name): tuple(v.signatures) for m in modules for name, v in vars(m).items()
            if isinstance(v, CPUDispatcher)}


@pytest.mark.parametrize("algorithm", ["OLS_C", "LIKELY"])
@pytest.mark.parametrize("dtypes", [{}, {"data": np.float64, "gain": np.float64, "readnoise": np.float64}],
                         ids=["float32", "float64"])
def test_compile_kernels_covers_a_run(dtypes, algorithm):
    ramps = simulate((2, 12, 20, 18), seed=4, chunks=(10, 9)).ramps
    ramps = ramps.assign({name: ramps[name].astype(dt) for name, dt in dtypes.items()})
    compile_kernels(ramps, algorithm)
    before = _signatures()
    result = detector1(ramps, after_jump_flag_dn1=10.0, after_jump_flag_time1=30.0, algorithm=algorithm)
    with dask.config.set(scheduler="threads"):
        dask.compute(result.rate, result.rateints)
    assert _signatures() == before  # the run called no kernel with types the warm-up had not compiled
    assert any(before.values())


def _all_signatures():
    """Signatures of every numba kernel in an imported daskcal module."""
    return {(name, attr): tuple(v.signatures) for name, m in list(sys.modules.items())
            if name.startswith("daskcal.") and m is not None
            for attr, v in list(vars(m).items()) if isinstance(v, CPUDispatcher)}


@pytest.mark.parametrize("v2v3", [False, True], ids=["tan", "jwst"])
def test_compile_resample_kernels_covers_a_run(v2v3):
    images = daskcal.simulate_images(3, (40, 48), seed=2, n_stars=5, v2v3=v2v3).images
    compile_resample_kernels(images, pixel_scale_ratio=0.8, kernel="square", weight_type="ivm")
    before = _all_signatures()
    with dask.config.set(scheduler="threads"):
        daskcal.resample(images, pixel_scale_ratio=0.8, kernel="square", weight_type="ivm").compute()
    assert _all_signatures() == before
    assert any(sig for (name, _), sig in before.items() if name.startswith("daskcal.image"))


def test_tiny_warm_up_wcs_inverts():
    wcs = _tiny_wcs()
    x, y = np.meshgrid(np.arange(-0.5, 24.0, 0.5), np.arange(-0.5, 24.0, 0.5))
    xi, yi = wcs.invert(*wcs(x, y, with_bounding_box=False), with_bounding_box=False)
    assert np.abs(xi - x).max() < 2e-4 and np.abs(yi - y).max() < 2e-4
    # distorted as a simulated exposure: its pixel map runs polynomials in both directions
    sim = daskcal.simulate_images(1, (24, 24), n_stars=1).images[0]
    ops = [line.split()[0] for line in compile_pixel_map(wcs, wcs).text.splitlines()]
    sim_ops = [line.split()[0] for line in compile_pixel_map(get_wcs(sim), wcs).text.splitlines()]
    assert ops.count("poly2") == sim_ops.count("poly2") == 4


def test_compile_outlier_kernels_covers_a_run():
    images = daskcal.simulate_images(3, (40, 48), seed=5, n_stars=5, cosmic_rays=4).images
    compile_outlier_kernels(images, snr="4.0 3.0", tile_shape=(16, 16))
    before = _all_signatures()
    result = daskcal.flag_outliers(images, snr="4.0 3.0")
    try:
        with dask.config.set(scheduler="threads"):
            flags = dask.compute([im["dq"] for im in result.images], result.median)[0]
    finally:
        result.cleanup()
    assert _all_signatures() == before
    assert any(sig for (name, _), sig in before.items() if name.startswith("daskcal.image._outlier"))
    assert any((f & daskcal.DQ.OUTLIER).any() for f in flags)


@pytest.mark.slow
def test_demo_says_when_it_compiles_and_workers_reuse_the_cache(tmp_path):
    cache = tmp_path / "numba-cache"
    args = ["-m", "daskcal.cli._main", "demo", "--shape", "1", "5", "32", "32", "--chunks", "16", "16",
            "--workers", "1", "--no-progress", "--no-tls"]
    first = _run([*args, "--out", str(tmp_path / "a")], cache, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(LINE) == 1
    files = sorted((p.relative_to(cache), p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file())
    assert files
    # one specialisation per kernel: the worker compiled nothing the driver had not
    assert not [f for f, _ in files if f.suffix == ".nbc" and f.suffixes[-2] != ".1"]
    second = _run([*args, "--out", str(tmp_path / "b")], cache, tmp_path)
    assert second.returncode == 0, second.stderr
    assert LINE not in second.stderr
    assert sorted((p.relative_to(cache), p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()) == files
