"""Pixel-map benchmark: gwcs against daskcal's compiled pixel map (``daskcal.image._pixmap``), one thread.

Run by hand (not a test)::

    python benchmarks/bench_pixmap.py            # 2048 x 2048 maps
    python benchmarks/bench_pixmap.py --quick    # 512 x 512

For each pair of WCSs: CPU seconds (``time.process_time``, best of 3) of the
full map with gwcs (``wcs_out.invert(*wcs_in(x, y, with_bounding_box=False),
with_bounding_box=False)``, the reference's ``calc_pixmap``), of daskcal's
previous path (``_driz.pixel_to_pixel``: TAN fast path, else gwcs) and of the
compiled program (``PixelMapProgram.grid``), the program's translation time, its
length and the largest difference from gwcs. The cold start (numba compiling
the kernel into an empty cache) and the warm start (loading it) are measured in
fresh processes. Results go to benchmarks/results/pixmap.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pixmap.txt"


def jwst_like(shape, *, ra, dec, roll, va_scale=1.00004, v2=120.0, v3=-520.0, distortion=2.0):
    """detector -> v2v3 -> v2v3vacorr -> world, the velocity-aberration stage as jwst's ``dva_corr_model``."""
    import gwcs
    from astropy import units as u
    from astropy.modeling import models

    from daskcal.image._simulate import v2v3_wcs

    info = {"v2_ref": v2, "v3_ref": v3, "roll_ref": roll, "ra_ref": ra, "dec_ref": dec}
    base = v2v3_wcs(shape, info, v2_det=v2 + 3.0, v3_det=v3 - 2.0, distortion=distortion)
    va = (models.Scale(va_scale) & models.Scale(va_scale)
          | models.Shift((1 - va_scale) * v2) & models.Shift((1 - va_scale) * v3))
    frame = {n: gwcs.coordinate_frames.Frame2D(name=n, axes_order=(0, 1), axes_names=("v2", "v3"),
                                               unit=(u.arcsec, u.arcsec)) for n in ("v2v3", "v2v3vacorr")}
    w = gwcs.WCS([(base.input_frame, base.get_transform("detector", "v2v3")), (frame["v2v3"], va),
                  (frame["v2v3vacorr"], base.get_transform("v2v3", "world")), (base.output_frame, None)])
    w.bounding_box = base.bounding_box
    w.pixel_shape = base.pixel_shape
    return w, info


def aligned(w, info):
    """``w`` with the v2v3corr stage (TPCorr) tweakwcs's JWSTWCSCorrector adds."""
    import numpy as np
    from tweakwcs.correctors import JWSTWCSCorrector

    th = np.deg2rad(0.01)
    c = JWSTWCSCorrector(wcs=w, wcsinfo=info)
    c.set_correction(matrix=1.00001 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]),
                     shift=[0.05, -0.08])
    return c.wcs


def _best(f, repeat=3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        out = f()
        best = min(best, time.process_time() - t)
    return best, out


def pairs(shape):
    import daskcal
    from daskcal.image._simulate import DEC0, RA0, distorted_wcs

    w_j, info = jwst_like(shape, ra=RA0, dec=DEC0, roll=20.0)
    w_j2, _ = jwst_like(shape, ra=RA0, dec=DEC0, roll=21.0, va_scale=0.99997, distortion=1.0)
    tan_in = daskcal.output_wcs([distorted_wcs(shape, RA0, DEC0, rotation=3.0)], pixel_scale=0.04, rotation=3.0)
    tan = daskcal.output_wcs([w_j])
    return [("JWST-like (v2v3, DVA) -> TAN   (resample)", w_j, tan),
            ("TAN -> JWST-like               (blot)", tan, w_j),
            ("JWST-like -> JWST-like", w_j, w_j2),
            ("tweakwcs-aligned JWST -> TAN", aligned(w_j, info), tan),
            ("distorted TAN -> TAN", distorted_wcs(shape, RA0, DEC0, rotation=10.0), tan),
            ("TAN -> TAN", tan_in, tan)]


def measure(shape):
    import numpy as np

    from daskcal.image._driz import pixel_to_pixel
    from daskcal.image._pixmap import compile_pixel_map

    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    rows = []
    for label, w_in, w_out in pairs(shape):
        t_gwcs, (gx, gy) = _best(lambda a=w_in, b=w_out: b.invert(*a(x, y, with_bounding_box=False),
                                                                  with_bounding_box=False))
        t_old, _ = _best(lambda a=w_in, b=w_out: pixel_to_pixel(a, b, x, y))
        t = time.process_time()
        prog = compile_pixel_map(w_in, w_out)
        t_translate = time.process_time() - t
        out = np.empty((ny, nx, 2))
        prog.grid(0, 8, 0, 8)
        t_prog, _ = _best(lambda p=prog, o=out: p.grid(0, ny, 0, nx, out=o))
        err = max(np.nanmax(np.abs(out[..., 0] - gx)), np.nanmax(np.abs(out[..., 1] - gy)))
        rows.append(f"{label:44s} {t_gwcs:7.3f} {t_old:7.3f} {t_prog:7.3f} {t_gwcs / t_prog:7.1f}x "
                    f"{t_translate * 1e3:8.1f} {prog.code.shape[0]:4d} {err:9.1e}")
    return rows


def startup(cache_dir):
    """CPU seconds of importing the kernel module and the first 1024 x 1024 map in a fresh process."""
    code = ("import time; t=time.process_time(); from daskcal.image import _pixmap_kernels; "
            "t1=time.process_time(); print(t1 - t)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(HERE.parent))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512 x 512 instead of 2048 x 2048")
    args = ap.parse_args(argv)
    shape = (512, 512) if args.quick else (2048, 2048)
    warnings.filterwarnings("ignore", message="The fit may be poorly conditioned")
    with tempfile.TemporaryDirectory() as d:
        # numba writes its cache next to the module unless NUMBA_CACHE_DIR says otherwise
        cold = startup(d)
        warm = startup(d)
    lines = [(f"# bench_pixmap.py {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
              f"({os.cpu_count()} cores, 1 thread used), map {shape[1]} x {shape[0]}"),
             f"# kernel import: cold (numba compiles, empty cache) {cold:.2f} s CPU, warm (cache) {warm:.2f} s CPU",
             ("# CPU s (best of 3): gwcs = wcs_out.invert(*wcs_in(x, y)); old = _driz.pixel_to_pixel (TAN fast path "
              "or gwcs); compiled = PixelMapProgram.grid"),
             "# translate = compile_pixel_map (ms, first call); ops = program length; maxdiff = max |compiled - gwcs| px",
             (f"{'pair':44s} {'gwcs':>7s} {'old':>7s} {'compiled':>7s} {'speedup':>8s} {'translate':>8s} "
              f"{'ops':>4s} {'maxdiff':>9s}")]
    lines += measure(shape)
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if not args.quick:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
