"""image3 benchmark (issue 12): ``daskcal image3`` end to end against the same steps run one after another.

Run by hand (not a test), from the repository root with this checkout first on the path::

    PYTHONPATH=. python benchmarks/bench_image3.py            # 8 x 2048x2048; then 32 x 2048x2048 (daskcal only)
    PYTHONPATH=. python benchmarks/bench_image3.py --quick    # 8 x 512x512; 32 x 512x512 (to debug)
    options: --api (daskcal through the Python API even when the CLI has image3), --skip-large,
             --skymethod match|global+match|global|local, --format zarr|fits, --workers 2

Inputs (prepared once under benchmarks/out/image3/, reused by later runs): ``simulate_images``
exposures in exposure groups of 2 (attribute ``group_id``), each group with an injected WCS
error (a shift of 0.05-0.3 arcsec and a rotation of 0.01-0.05 deg, composed on the sky side
in the tangent plane of the field centre, so both exposures of a group share it) and each
exposure with a sky offset added to ``data``; sky ``level`` 0, not subtracted (as a ``_cal``
file before skymatch). Saved as Zarr stores (or ``_cal.fits``) with an association JSON
(``products[0].name``, members' ``expname``/``exptype``/``group_id``); the true WCSs, errors
and offsets in ``truth.json``.

Cases, each in a fresh process:

1. reference, one process, inputs in memory, steps one after another:
   tweakreg = per exposure a photutils catalog as jwst's ``make_tweakreg_catalog`` with the
   tweakreg step's defaults (Background2D 400 px boxes, 3x3 filter, 3-sigma clip, median;
   IRAFStarFinder on data - background with threshold the median of 10 x the background
   RMS, FWHM 2.5, sharpness 0.5-2, roundness 0-0.2, brightest 200, separation 2 px), then ``stcal.tweakreg.relative_align`` (tweakwcs
   ``JWSTWCSCorrector`` per exposure with its group id; searchrad 2", separation 1",
   tolerance 0.7", rshift, minobj 15); a plain detector->world WCS gets an equivalent
   ``v2v3`` frame first (tangent plane at the image centre, v2_ref = v3_ref = roll_ref = 0);
   skymatch = ``stcal.skymatch.skymatch`` over ``SkyImage`` objects (a ``SkyGroup`` per
   exposure group; mode statistic, 5 clips at 4 sigma, binwidth 0.1, good bits
   ``~DO_NOT_USE+NON_SCIENCE``; the sky level becomes ``level``, not subtracted);
   outlier detection = ``reference_outliers`` of tests/image/test_outliers.py on the grid
   ``daskcal.output_wcs`` gives the aligned WCSs, flagged pixels set to NaN as jwst's
   ``_crf``; resample = ``stcal.resample.Resample`` (square, pixfrac 1, ivm, variances,
   context, err from variances) on the same grid. Each step timed; peak = the process's VmHWM.
2. daskcal: ``python -m daskcal.cli._main image3 ASN OUT --workers 2 --no-progress`` as a
   user runs it (cold start: imports, cluster, reading, writing the products), when the
   checkout has ``daskcal.cli._image3``; else (or with ``--api``) ``daskcal.image._pipeline.image3``
   from the association inside ``daskcal.connect(n_workers=2, threads_per_worker=1)``, saved
   with ``save_products`` (steps the checkout lacks, ``daskcal.align``/``daskcal.match_sky``,
   are skipped there and in the reference). Peak = summed RSS of the command (or client),
   nanny and worker processes, sampled every 50 ms (benchmarks/_proc.TreeSampler).
3. daskcal alone on 32 exposures of the same size (16 groups): its summed peak against (2).

Compared: the mosaics (fraction of pixels where both have weight that agree within 1e-4
relative), outlier flags set by each, and the relative alignment each recovered against the
injected truth (largest misalignment between exposures on the sky, in mas, before and after).
Results are appended to benchmarks/results/image3.txt (date, machine, command, numbers).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import re
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _proc import TreeSampler
from _proc import peak_mb as _peak_mb
from _proc import rss_mb as _rss_mb

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "image3"
RESULTS = HERE / "results" / "image3.txt"
GROUP_SIZE = 2
PRODUCT = "bench_image3"
#: stcal.resample / daskcal.resample settings of both sides (daskcal.resample's defaults)
RESAMPLE = {"kernel": "square", "pixfrac": 1.0, "weight_type": "ivm", "fillval": "NaN", "enable_ctx": True,
            "enable_var": True, "compute_err": "from_var", "good_bits": "~DO_NOT_USE+NON_SCIENCE"}
#: jwst tweakreg step defaults for the catalogs (iraf star finder) and relative alignment
CATALOG = {"snr_threshold": 10.0, "kernel_fwhm": 2.5, "bkg_boxsize": 400, "sigma_radius": 1.5, "sharplo": 0.5,
           "sharphi": 2.0, "roundlo": 0.0, "roundhi": 0.2, "brightest": 200, "peakmax": None, "minsep_fwhm": 0.0}
ALIGN = {"searchrad": 2.0, "separation": 1.0, "use2dhist": True, "tolerance": 0.7, "xoffset": 0.0, "yoffset": 0.0,
         "enforce_user_order": False, "expand_refcat": False, "minobj": 15, "fitgeometry": "rshift", "nclip": 3,
         "sigma": 3.0}
#: jwst skymatch step defaults except the method (--skymethod)
SKYSTAT = {"skystat": "mode", "lower": None, "upper": None, "nclip": 5, "lsig": 4.0, "usig": 4.0, "binwidth": 0.1}
SKY_DQBITS = "~DO_NOT_USE+NON_SCIENCE"


# ---------------------------------------------------------------- inputs

def _wcs_error(dx: float, dy: float, rot: float):
    """Sky -> sky: shift (arcsec) and rotation (deg) in the tangent plane of the field centre."""
    from astropy.modeling import models

    from daskcal.image._simulate import DEC0, RA0

    th = math.radians(rot)
    to_plane = models.RotateCelestial2Native(RA0, DEC0, 180.0) | models.Sky2Pix_TAN()
    aff = models.AffineTransformation2D(matrix=[[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]],
                                        translation=[dx / 3600.0, dy / 3600.0])
    return to_plane | aff | (models.Pix2Sky_TAN() | models.RotateNative2Celestial(RA0, DEC0, 180.0))


def perturb_wcs(wcs, dx: float, dy: float, rot: float):
    """``wcs`` followed by a sky-side error (:func:`_wcs_error`); same frames, box and shape."""
    import gwcs

    fwd = wcs.forward_transform | _wcs_error(dx, dy, rot)
    out = gwcs.WCS([(wcs.input_frame, fwd), (wcs.output_frame, None)])
    out.bounding_box = wcs.bounding_box
    out.pixel_shape = wcs.pixel_shape
    return out


def prepare(n: int, shape, *, seed: int, cosmic_rays: int, fmt: str = "zarr") -> Path:
    """Write (once) ``n`` exposures in groups of 2 with injected WCS errors and sky offsets; return the association."""
    import numpy as np

    from daskcal.image._dataset import get_wcs, wcs_to_text
    from daskcal.image._simulate import simulate_images

    d = OUT / f"{n}x{shape[0]}x{shape[1]}-{fmt}-seed{seed}"
    asn = d / "asn.json"
    if asn.exists() and (d / "truth.json").exists():
        return asn
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    sim = simulate_images(n, shape, seed=seed, cosmic_rays=cosmic_rays)
    rng = np.random.default_rng(seed + 1000)
    ngroups = -(-n // GROUP_SIZE)
    mag = rng.uniform(0.05, 0.3, ngroups)
    ang = rng.uniform(0.0, 2 * np.pi, ngroups)
    rot = rng.uniform(0.01, 0.05, ngroups) * rng.choice([-1.0, 1.0], ngroups)
    errors = [{"dx": float(m * np.cos(a)), "dy": float(m * np.sin(a)), "rot": float(r)} for m, a, r in zip(mag, ang, rot)]
    offsets = rng.uniform(-0.3, 0.6, n)  # DN/s added to data (sim sky ~1 DN/s)
    members, truth = [], {"errors": errors, "sky_offset": offsets.tolist(), "sky_level": [],
                          "true_wcs": [], "group": [], "name": []}
    for i, ds in enumerate(sim.images):
        g = i // GROUP_SIZE
        name = f"bench{i:03d}_nrca{i % GROUP_SIZE + 1}"
        gid = f"grp{g:02d}"
        wcs = get_wcs(ds)
        bad = perturb_wcs(wcs, **errors[g])
        new = ds.assign(data=ds["data"] + np.float32(offsets[i]))
        new = new.assign_attrs(name=name, group_id=gid, level=0.0, subtracted=False, wcs_asdf=wcs_to_text(bad))
        truth["sky_level"].append(float(ds.attrs["level"]) + float(offsets[i]))
        truth["true_wcs"].append(ds.attrs["wcs_asdf"])
        truth["group"].append(gid)
        truth["name"].append(name)
        if fmt == "fits":
            try:  # moved to the writing side's module on the fitsout branch
                from daskcal.image._fits_write import write_cal_fits
            except ImportError:
                from daskcal.image._io import write_cal_fits

            fname = f"{name}_cal.fits"
            write_cal_fits(new, d / fname)
        else:
            from daskcal.io._atomic import save_dataset

            fname = f"{name}_cal.zarr"
            save_dataset(new, d / fname)
        members.append({"expname": fname, "exptype": "science", "group_id": gid})
    (d / "truth.json").write_text(json.dumps(truth))
    asn.write_text(json.dumps({"asn_type": "image3", "asn_id": "bench", "asn_pool": "none",
                               "products": [{"name": PRODUCT, "members": members}]}, indent=1))
    return asn


# ---------------------------------------------------------------- reference (one process)

def _load_test_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE.parent / "tests" / "image" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tweakreg_catalog(ds):
    """Sources of one exposure as jwst's make_tweakreg_catalog (jwst 1.18+) with the tweakreg step defaults (iraf).

    Background2D (box 400 px, 3x3 filter, 3-sigma clip, median) over the pixels without
    NON_SCIENCE/DO_NOT_USE; the finder runs on data minus background with a scalar
    threshold, the median of 10 x the background RMS; IRAFStarFinder's minimum
    separation from minsep_fwhm = 0 is photutils' floor of 2 px.
    """
    import warnings

    import numpy as np
    from astropy.stats import SigmaClip
    from astropy.table import Table
    from photutils.background import Background2D, MedianBackground
    from photutils.detection import IRAFStarFinder

    from daskcal.dq import DQ

    p = CATALOG
    data = ds["data"].values
    coverage = (ds["dq"].values & np.uint32(DQ.NON_SCIENCE | DQ.DO_NOT_USE)) != 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bkg = Background2D(data, p["bkg_boxsize"], filter_size=(3, 3), coverage_mask=coverage,
                           sigma_clip=SigmaClip(sigma=3.0), bkg_estimator=MedianBackground())
        threshold = float(np.median(p["snr_threshold"] * bkg.background_rms))
        finder = IRAFStarFinder(threshold, p["kernel_fwhm"], sigma_radius=p["sigma_radius"],
                                sharpness_range=(p["sharplo"], p["sharphi"]),
                                roundness_range=(p["roundlo"], p["roundhi"]), n_brightest=p["brightest"],
                                peak_max=p["peakmax"],
                                min_separation=max(2, int(p["minsep_fwhm"] * p["kernel_fwhm"] + 0.5)))
        sources = finder(data - bkg.background, mask=coverage)
    if sources is None or len(sources) == 0:
        return Table(names=["x", "y"], dtype=[float, float])
    xname = "x_centroid" if "x_centroid" in sources.colnames else "xcentroid"
    yname = "y_centroid" if "y_centroid" in sources.colnames else "ycentroid"
    return Table({"x": np.asarray(sources[xname], float), "y": np.asarray(sources[yname], float)})


def with_v2v3(wcs, shape):
    """A detector -> world gwcs as detector -> v2v3 -> world (tangent plane at the image centre, roll 0)."""
    import gwcs
    from astropy import units as u
    from astropy.modeling import models
    from gwcs.geometry import CartesianToSpherical, SphericalToCartesian

    ny, nx = shape
    ra, dec = wcs((nx - 1) / 2.0, (ny - 1) / 2.0, with_bounding_box=False)
    v23 = (models.Scale(1 / 3600.0) & models.Scale(1 / 3600.0) | SphericalToCartesian(wrap_lon_at=180)
           | models.RotationSequence3D([0.0, 0.0, 0.0, float(dec), -float(ra)], axes_order="zyxyz")
           | CartesianToSpherical(wrap_lon_at=360))
    fwd = wcs.forward_transform
    to_v2v3 = fwd | v23.inverse
    to_v2v3.inverse = v23 | fwd.inverse
    frame = gwcs.coordinate_frames.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"),
                                           unit=(u.arcsec, u.arcsec))
    out = gwcs.WCS([(wcs.input_frame, to_v2v3), (frame, v23), (wcs.output_frame, None)])
    out.bounding_box = wcs.bounding_box
    out.pixel_shape = wcs.pixel_shape
    return out


def reference_tweakreg(images, catalogs):
    """Aligned WCSs from stcal's relative_align (the original WCS where the fit did not succeed)."""
    from stcal.tweakreg.tweakreg import construct_wcs_corrector, relative_align

    from daskcal.image._dataset import get_wcs

    correctors = []
    for ds, cat in zip(images, catalogs):
        cat.meta["name"] = ds.attrs["name"]
        w = with_v2v3(get_wcs(ds), ds["data"].shape)
        correctors.append(construct_wcs_corrector(w, {"roll_ref": 0.0, "v2_ref": 0.0, "v3_ref": 0.0}, cat,
                                                  ds.attrs["group_id"]))
    correctors = relative_align(correctors, **ALIGN)
    out, status = [], []
    for c, ds in zip(correctors, images):
        fit = c.meta.get("fit_info", {})
        ok = "SUCCESS" in fit.get("status", "")
        status.append(fit.get("status", "none"))
        out.append(c.wcs if ok else get_wcs(ds))
    return out, status


def reference_skymatch(images, wcss, skymethod: str):
    """Sky levels (unit of data) from stcal.skymatch over SkyImage/SkyGroup objects, as jwst's skymatch step."""
    import numpy as np
    from astropy.nddata.bitmask import bitfield_to_boolean_mask
    from stcal.skymatch import SkyGroup, SkyImage, SkyStats, skymatch

    from daskcal.dq import dq_dict

    stat = SkyStats(**SKYSTAT)
    groups: dict[str, list] = {}
    for k, (ds, w) in enumerate(zip(images, wcss)):
        data = ds["data"].values
        mask = bitfield_to_boolean_mask(ds["dq"].values, SKY_DQBITS, good_mask_value=True, dtype=bool,
                                        flag_name_map=dq_dict()) & np.isfinite(data)
        im = SkyImage(image=data, mask=mask, wcs_fwd=w.__call__, wcs_inv=w.invert, skystat=stat.calc_sky,
                      sky_id=ds.attrs["name"], stepsize=None, meta={"index": k})
        groups.setdefault(ds.attrs["group_id"], []).append(im)
    items = [g[0] if len(g) == 1 else SkyGroup(g, sky_id=gid) for gid, g in groups.items()]
    skymatch(items, skymethod=skymethod, match_down=True, subtract=False)
    levels = [0.0] * len(images)
    for g in groups.values():
        for im in g:
            levels[im.meta["index"]] = float(im.sky) if im.is_sky_valid else 0.0
    return levels


def reference_resample(images, out_wcs):
    """stcal.resample.Resample over the exposures in memory onto ``out_wcs``; the output model (dict)."""
    import warnings

    from stcal.resample import Resample

    from daskcal.dq import dq_dict
    from daskcal.image._dataset import get_wcs

    class _Resample(Resample):
        dq_flag_name_map = dq_dict()

    r = _Resample({"wcs": out_wcs, "pixel_scale_ratio": 1.0, "pixel_scale": None}, pixmap_stepsize=1, **RESAMPLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ds in images:
            m = {k: ds[k].values for k in ds.data_vars}
            a = ds.attrs
            m.update(filename=a["name"], group_id=a["group_id"], wcs=get_wcs(ds), exposure_time=a["exposure_time"],
                     start_time=a["start_time"], end_time=a["end_time"], duration=a["duration"],
                     measurement_time=a["measurement_time"], pixelarea_steradians=None, level=a["level"],
                     subtracted=a["subtracted"])
            r.add_model(m)
        r.finalize()
    return r.output_model


def child_reference(asn: str, save: str, steps: list[str], skymethod: str) -> dict:
    import numpy as np

    from daskcal.dq import DQ
    from daskcal.image._dataset import wcs_to_text
    from daskcal.image._grid import output_wcs
    from daskcal.image._io import open_images

    t_start = time.perf_counter()
    outliers_mod = _load_test_module("test_outliers")
    images = [ds.load() for ds in open_images(asn)]
    t_read = time.perf_counter() - t_start
    base = _rss_mb()
    sec, info = {}, {}
    t0 = time.perf_counter()
    if "tweakreg" in steps:
        t = time.perf_counter()
        cats = [tweakreg_catalog(ds) for ds in images]
        sec["tweakreg catalogs"] = time.perf_counter() - t
        t = time.perf_counter()
        wcss, status = reference_tweakreg(images, cats)
        images = [ds.assign_attrs(wcs_asdf=wcs_to_text(w)) for ds, w in zip(images, wcss)]
        sec["tweakreg fit"] = time.perf_counter() - t
        info["sources"] = [len(c) for c in cats]
        info["fit_status"] = status
    if "skymatch" in steps:
        from daskcal.image._dataset import get_wcs

        t = time.perf_counter()
        levels = reference_skymatch(images, [get_wcs(ds) for ds in images], skymethod)
        images = [ds.assign_attrs(level=lv, subtracted=False) for ds, lv in zip(images, levels)]
        sec["skymatch"] = time.perf_counter() - t
        info["sky_levels"] = levels
    t = time.perf_counter()
    out = output_wcs(images)
    _, dqs = outliers_mod.reference_outliers(images, out)
    crf = []
    for ds, dq in zip(images, dqs):
        new = (dq & np.uint32(DQ.OUTLIER)) != 0
        upd = {"dq": (("y", "x"), dq)}
        for var in ("data", "err", "var_rnoise", "var_poisson", "var_flat"):
            if var in ds:
                a = ds[var].values.copy()
                a[new] = np.nan
                upd[var] = (("y", "x"), a)
        crf.append(ds.assign(upd))
    sec["outlier_detection"] = time.perf_counter() - t
    t = time.perf_counter()
    model = reference_resample(crf, out)
    sec["resample"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    outliers = [int(((dq & np.uint32(DQ.OUTLIER)) != 0).sum()) for dq in dqs]
    np.savez(save, data=model["data"], wht=model["wht"])
    wcs_file = str(Path(save).with_suffix(".wcs.json"))
    Path(wcs_file).write_text(json.dumps([ds.attrs["wcs_asdf"] for ds in images]))
    return {"seconds": sec, "total": total, "read_seconds": t_read, "peak_mb": _peak_mb(), "base_mb": base,
            "outliers": outliers, "shape": list(model["data"].shape), "wcs_file": wcs_file, **info}


# ---------------------------------------------------------------- daskcal

@functools.cache
def have_cli() -> bool:
    """Whether this checkout's CLI has the image3 subcommand registered (``daskcal image3 --help`` works)."""
    out = subprocess.run([sys.executable, "-m", "daskcal.cli._main", "image3", "--help"], capture_output=True,
                         env=_child_env(), check=False)
    return out.returncode == 0


def api_steps() -> list[str]:
    """The steps this checkout's daskcal.image3 can run (align and match_sky may not be here yet)."""
    steps = []
    if importlib.util.find_spec("daskcal.image._align") is not None:
        steps.append("tweakreg")
    if importlib.util.find_spec("daskcal.image._skymatch") is not None:
        steps.append("skymatch")
    return [*steps, "outlier_detection", "resample"]


def _child_env() -> dict:
    from daskcal.cluster import WORKER_ENVIRON

    env = dict(os.environ, **{k: str(v) for k, v in WORKER_ENVIRON.items()})
    root = str(HERE.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    return env


def run_cli(asn: Path, outdir: Path, workers: int, extra: list[str]) -> dict:
    """``daskcal image3`` as a user runs it; wall time and summed peak RSS of the command and its workers."""
    import psutil

    if outdir.exists():
        shutil.rmtree(outdir)
    cmd = [sys.executable, "-m", "daskcal.cli._main", "image3", str(asn), str(outdir), "--workers", str(workers),
           "--no-progress", *extra]
    sampler = TreeSampler()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env())
    sampler.proc = psutil.Process(proc.pid)
    with sampler:
        out, err = proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    seconds = {}
    for line in out.splitlines():  # "image3: 8 exposures in 12.3 s": from image3's call to the products written
        m = re.match(r"image3: \d+ exposures in ([\d.]+) s$", line.strip())
        if m:
            seconds["image3 + writing (cluster up)"] = float(m.group(1))
    return {"total": elapsed, "seconds": seconds, "peak_mb": sampler.peak_total,
            "worker_peak_mb": sampler.peak_single_child, "command": " ".join(["python", *cmd[1:]]),
            "stdout_tail": out[-800:]}


def child_api(asn: str, outdir: str, workers: int, steps: list[str], skymethod: str, warm: str | None) -> dict:
    """daskcal.image3 from the association on 2 workers, products saved with save_products.

    With ``warm`` (a small association), image3 runs on it first, untimed, on the same
    cluster: imports, first calls and numba's caches are loaded before timing, as in
    the reference process (bench_outliers warms its workers the same way).
    """
    from daskcal.cluster import connect

    kw = {"tweakreg": None if "tweakreg" in steps else False,  # None: the step's defaults (jwst's)
          "skymatch": {"skymethod": skymethod} if "skymatch" in steps else False}
    with TreeSampler() as s:
        t_start = time.perf_counter()
        with connect("local", n_workers=workers, threads_per_worker=1) as _client:
            t_cluster = time.perf_counter() - t_start
            if warm:
                try:
                    _api_run(warm, Path(outdir).with_name("warm-api"), kw)
                except Exception as exc:  # noqa: BLE001  (a warm-up that fails still warmed what it reached)
                    print(f"warm-up run failed: {exc!r}", file=sys.stderr)
                shutil.rmtree(Path(outdir).with_name("warm-api"), ignore_errors=True)
            t0 = time.perf_counter()
            t_eager, t_save = _api_run(asn, outdir, kw)
            total = time.perf_counter() - t0
    eager = " + ".join(s for s in ("tweakreg", "skymatch") if s in steps)
    label = f"image3 call ({eager + ' computed, ' if eager else ''}outlier/resample graphs built)"
    return {"total": total, "seconds": {label: t_eager,
                                        "outlier_detection + resample + write (one pass)": t_save},
            "cluster_seconds": t_cluster, "peak_mb": s.peak_total, "worker_peak_mb": s.peak_single_child,
            "warm": bool(warm), "steps": steps}


def _api_run(asn, outdir, kw) -> tuple[float, float]:
    from daskcal.image._pipeline import image3
    from daskcal.io._atomic import save_products

    t0 = time.perf_counter()
    res = image3(asn, **kw)
    t_eager = time.perf_counter() - t0
    t = time.perf_counter()
    products = {f"{res.product_name}_i2d": res.mosaic}
    products.update({f"{_stem(im.attrs['name'])}_crf": im for im in res.images})
    try:
        save_products(products, outdir, overwrite=True)
    finally:
        res.cleanup()
    return t_eager, time.perf_counter() - t


def read_daskcal(outdir: Path) -> dict:
    """The mosaic's data/wht, each exposure's outlier count and WCS text from daskcal's products."""
    import numpy as np

    from daskcal.dq import DQ
    from daskcal.image._io import open_images

    i2d = sorted(p for p in outdir.iterdir() if p.name.endswith(("_i2d.zarr", "_i2d.fits")))
    crf = sorted(p for p in outdir.iterdir() if p.name.endswith(("_crf.zarr", "_crf.fits")))
    if len(i2d) != 1 or not crf:
        msg = f"expected one *_i2d and *_crf products in {outdir}; found {sorted(p.name for p in outdir.iterdir())}"
        raise FileNotFoundError(msg)
    if i2d[0].suffix == ".fits":
        from astropy.io import fits

        with fits.open(i2d[0]) as hdul:
            data, wht = hdul["SCI"].data.astype(np.float32), hdul["WHT"].data.astype(np.float32)
    else:
        import xarray as xr

        m = xr.open_zarr(i2d[0], consolidated=False)
        data, wht = m["data"].values, m["wht"].values
    ims = open_images(crf)
    by_name = {}
    for p, ds in zip(crf, ims):
        by_name[_stem(p.name)] = {"outliers": int(((ds["dq"].values & np.uint32(DQ.OUTLIER)) != 0).sum()),
                         "wcs": ds.attrs["wcs_asdf"], "level": ds.attrs.get("level")}
    return {"data": data, "wht": wht, "by_name": by_name}


def _stem(name: str) -> str:
    """An exposure's name without extension and step suffix: ``x_nrca1_cal.fits`` -> ``x_nrca1`` (as the CLI names _crf)."""
    for ext in (".zarr", ".fits"):
        name = name.removesuffix(ext)
    for suffix in ("_crf", "_cal"):
        name = name.removesuffix(suffix)
    return name


# ---------------------------------------------------------------- comparisons

def misalignment_mas(wcs_texts: list[str], truth: dict) -> float:
    """Largest sky distance (mas) between where two exposures put the same source, over exposures and 5 points.

    An exposure's error map is where its WCS (``wcs_texts``) puts a pixel minus where
    its true WCS does. For each exposure k > 0, at its centre and corners, its error is
    compared with exposure 0's at the same sky point (pixel found with exposure 0's true
    WCS): an error all exposures share cancels, a relative one does not.
    """
    import numpy as np

    from daskcal.image._dataset import wcs_from_text

    true = [wcs_from_text(t) for t in truth["true_wcs"]]
    got = [wcs_from_text(t) for t in wcs_texts]

    def error(k, x, y):  # arcsec, (east, north)
        t = np.array(true[k](x, y, with_bounding_box=False))
        g = np.array(got[k](x, y, with_bounding_box=False))
        dra = (g[0] - t[0] + 180.0) % 360.0 - 180.0
        return np.array([dra * np.cos(np.radians(t[1])), g[1] - t[1]]) * 3600.0

    worst = 0.0
    for k in range(1, len(true)):
        nx, ny = true[k].pixel_shape
        x = np.array([(nx - 1) / 2, 0, nx - 1, 0, nx - 1], float)
        y = np.array([(ny - 1) / 2, 0, 0, ny - 1, ny - 1], float)
        ra, dec = true[k](x, y, with_bounding_box=False)
        x0, y0 = true[0].invert(ra, dec, with_bounding_box=False)
        d = np.hypot(*(error(k, x, y) - error(0, x0, y0))) * 1000.0
        worst = max(worst, float(np.max(d)))
    return worst


def wcs_difference_mas(texts_a: list[str], texts_b: list[str], truth: dict) -> float:
    """Largest sky distance (mas) between two WCSs of the same exposure, over exposures, centre and corners."""
    import numpy as np

    from daskcal.image._dataset import wcs_from_text

    worst = 0.0
    for ta, tb, tt in zip(texts_a, texts_b, truth["true_wcs"]):
        a, b = wcs_from_text(ta), wcs_from_text(tb)
        nx, ny = wcs_from_text(tt).pixel_shape
        x = np.array([(nx - 1) / 2, 0, nx - 1, 0, nx - 1], float)
        y = np.array([(ny - 1) / 2, 0, 0, ny - 1, ny - 1], float)
        pa = np.array(a(x, y, with_bounding_box=False))
        pb = np.array(b(x, y, with_bounding_box=False))
        dra = ((pa[0] - pb[0] + 180.0) % 360.0 - 180.0) * np.cos(np.radians(pb[1]))
        worst = max(worst, float(np.max(np.hypot(dra, pa[1] - pb[1]))) * 3.6e6)
    return worst


def compare_mosaics(ref: dict, dc: dict, rtol: float = 1e-4) -> dict:
    """Where both mosaics have weight: the fraction within ``rtol`` relative, and within ``rtol`` of the largest |value|.

    The mosaic is sky-subtracted, so most pixels are noise about 0 where a relative
    tolerance alone is stricter than float32 rounding of the steps; the second figure
    uses ``rtol * max|reference|`` as an absolute floor (as bench_resample does).
    """
    import numpy as np

    a, b = ref["data"], dc["data"]
    if a.shape != b.shape:
        return {"shape_ref": list(a.shape), "shape_daskcal": list(b.shape)}
    both = (ref["wht"] > 0) & (dc["wht"] > 0) & np.isfinite(a) & np.isfinite(b)
    aa, bb = a[both].astype(np.float64), b[both].astype(np.float64)
    diff = np.abs(aa - bb)
    scale = float(np.max(np.abs(aa))) if aa.size else 1.0
    ok = diff <= rtol * np.maximum(np.abs(aa), np.abs(bb))
    ok_floor = diff <= rtol * np.maximum(np.maximum(np.abs(aa), np.abs(bb)), scale)
    weighted_one = int(np.sum((ref["wht"] > 0) != (dc["wht"] > 0)))
    return {"n_both": int(both.sum()), "agree": float(ok.mean()) if ok.size else float("nan"),
            "agree_floor": float(ok_floor.mean()) if ok.size else float("nan"), "scale": scale,
            "max_abs": float(diff.max()) if diff.size else 0.0,
            "median_abs": float(np.median(diff)) if diff.size else 0.0, "weight_mismatch": weighted_one}


# ---------------------------------------------------------------- driver

def _run_child(args_list: list[str]) -> dict:
    from _proc import run_child

    return run_child(__file__, args_list)


def _machine() -> str:
    return f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()}, python {platform.python_version()})"


def _versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("stcal", "tweakwcs", "drizzle", "photutils", "dask", "distributed"))


def run_daskcal(asn: Path, outdir: Path, args, steps, warm: Path) -> dict:
    """The daskcal case: the API in a child process (warmed on ``warm`` first), or the CLI (cold)."""
    if args.api or not have_cli():
        return _run_child(["--child", "api", "--asn", str(asn), "--outdir", str(outdir), "--workers",
                           str(args.workers), "--steps", *steps, "--skymethod", args.skymethod, "--warm", str(warm)])
    extra = list(args.cli_arg)
    if args.skymethod != "match":
        extra.append(f"--steps.skymatch.skymethod={args.skymethod}")
    return run_cli(asn, outdir, args.workers, extra)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 and 32 exposures of 512x512 instead of 2048x2048")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--n-large", type=int, default=32)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--api", action="store_true", help="run daskcal through daskcal.image3, not the CLI")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skymethod", default="match", help="skymatch method of both sides (jwst's default: match)")
    ap.add_argument("--format", default="zarr", choices=["zarr", "fits"], help="input exposures as Zarr or _cal.fits")
    ap.add_argument("--cli-arg", action="append", default=[], help="extra argument for daskcal image3 (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="keep the products of both sides here (default: a temporary folder)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--asn", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--outdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--steps", nargs="*", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--warm", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "reference":
        print(json.dumps(child_reference(args.asn, args.save, args.steps, args.skymethod)))
        return 0
    if args.child == "api":
        print(json.dumps(child_api(args.asn, args.outdir, args.workers, args.steps, args.skymethod, args.warm)))
        return 0

    shape = (512, 512) if args.quick else (2048, 2048)
    ncr = 200 if args.quick else 2000
    via = "API (daskcal.image3 + save_products)" if args.api or not have_cli() else "CLI (daskcal image3)"
    # the reference runs what the daskcal side runs (the API lacks steps this checkout does not have)
    steps = api_steps() if (args.api or not have_cli()) else ["tweakreg", "skymatch", "outlier_detection", "resample"]
    print(f"preparing inputs ({args.n} x {shape}) ...", flush=True)
    asn = prepare(args.n, shape, seed=args.seed, cosmic_rays=ncr, fmt=args.format)
    truth = json.loads((asn.parent / "truth.json").read_text())
    warm = prepare(4, (256, 256), seed=99, cosmic_rays=10, fmt=args.format)
    command = f"python benchmarks/bench_image3.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    lines = [f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {_machine()}; {_versions()}",
             f"# command: {command}",
             (f"# {args.n} dithered {shape[0]}x{shape[1]} exposures in {-(-args.n // GROUP_SIZE)} groups of "
             f"{GROUP_SIZE}, {ncr} cosmic rays each, WCS errors 0.05-0.3\" / 0.01-0.05 deg per group, sky offsets; "
             f"inputs {args.format} + association; steps: {', '.join(steps)}; skymethod {args.skymethod}; "
             f"daskcal via {via}, {args.workers} workers x 1 thread")]
    with tempfile.TemporaryDirectory(prefix="bench-image3-") as tmp:
        tmp = Path(args.workdir) if args.workdir else Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        if not (args.api or not have_cli()):
            try:  # numba's on-disk caches filled; not counted
                run_daskcal(warm, tmp / "warm", args, steps, warm)
            except RuntimeError as exc:  # a warm-up that fails (too few stars to align) still warmed what it reached
                print(f"warm-up run failed: {str(exc)[-300:]}", file=sys.stderr)
        ref_npz = tmp / "ref.npz"
        loads = [os.getloadavg()[0]]
        ref = _run_child(["--child", "reference", "--asn", str(asn), "--save", str(ref_npz), "--steps", *steps,
                          "--skymethod", args.skymethod])
        print("reference", json.dumps(ref), flush=True)
        dc_out = tmp / "daskcal"
        loads.append(os.getloadavg()[0])
        dc = run_daskcal(asn, dc_out, args, steps, warm)
        loads.append(os.getloadavg()[0])
        print("daskcal", json.dumps(dc), flush=True)
        got = read_daskcal(dc_out)
        import numpy as np

        refm = dict(np.load(ref_npz))
        cmp = compare_mosaics(refm, got)
        ref_wcs = json.loads(Path(ref["wcs_file"]).read_text())
        dc_wcs = [got["by_name"][n]["wcs"] for n in truth["name"]]
        dc_outliers = [got["by_name"][n]["outliers"] for n in truth["name"]]
        before = misalignment_mas([_input_wcs(asn, n) for n in truth["name"]], truth)
        align_ref = misalignment_mas(ref_wcs, truth) if "tweakreg" in steps else None
        align_dc = misalignment_mas(dc_wcs, truth) if "tweakreg" in steps else None
        sides = {"wcs_mas": wcs_difference_mas(ref_wcs, dc_wcs, truth)}
        if "skymatch" in steps:
            dc_levels = [got["by_name"][n]["level"] for n in truth["name"]]
            sides["levels"] = (ref["sky_levels"], dc_levels)
        large = None
        if not args.skip_large:
            print(f"preparing inputs ({args.n_large} x {shape}) ...", flush=True)
            asn_l = prepare(args.n_large, shape, seed=args.seed, cosmic_rays=ncr, fmt=args.format)
            large = run_daskcal(asn_l, tmp / "daskcal-large", args, steps, warm)
            print("daskcal large", json.dumps(large), flush=True)
    lines += _report(ref, dc, cmp, sum(ref["outliers"]), sum(dc_outliers), before, align_ref, align_dc, large, args,
                     sides)
    lines.append(f"# 1-minute load average before the reference, before and after daskcal: "
                 f"{', '.join(f'{v:.2f}' for v in loads)} (2 cores shared with other work make these numbers noisy)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))
    print(f"appended to {RESULTS}")
    return 0


def _input_wcs(asn: Path, name: str) -> str:
    from daskcal.image._io import open_images

    members = json.loads(asn.read_text())["products"][0]["members"]
    m = next(m for m in members if m["expname"].startswith(name))
    return open_images([asn.parent / m["expname"]])[0].attrs["wcs_asdf"]


def _report(ref, dc, cmp, n_ref, n_dc, before, align_ref, align_dc, large, args, sides) -> list[str]:
    ref_wall = ref["total"] + ref["read_seconds"]
    what = ("image3 reading the inputs lazily + writing the products, on a warm cluster" if "cluster_seconds" in dc
            else "the whole command from a cold start: imports, cluster, reading, writing the products")
    lines = [f"{'run':<44} {'seconds':>8} {'peak MB':>8}  per step (s)",
             f"{'reference (photutils+stcal+tweakwcs+drizzle)':<44} {ref['total']:>8.1f} {ref['peak_mb']:>8.0f}  "
             + ", ".join(f"{k} {v:.1f}" for k, v in ref["seconds"].items())
             + f"; one process, inputs in memory ({ref['base_mb']:.0f} MB before the steps, {ref['read_seconds']:.1f} s to read)",
             f"{'daskcal (' + str(args.workers) + ' workers)':<44} {dc['total']:>8.1f} {dc['peak_mb']:>8.0f}  "
             + (", ".join(f"{k} {v:.1f}" for k, v in dc["seconds"].items()) or "the whole command, cold")
             + (f"; warmed on a small run first, cluster start {dc['cluster_seconds']:.1f} s not counted"
                if "cluster_seconds" in dc else "")
             + f"; summed over all its processes, largest worker {dc['worker_peak_mb']:.0f} MB; reads and writes Zarr",
             (f"# speed-up {ref['total'] / dc['total']:.2f}x over the reference's steps, {ref_wall / dc['total']:.2f}x "
              f"over its steps + reading (daskcal: {what}); peak memory daskcal/reference "
              f"{dc['peak_mb'] / ref['peak_mb']:.2f}")]
    if "agree" in cmp:
        lines.append(f"# mosaic: of the {cmp['n_both']} pixels both weight, {cmp['agree'] * 100:.4f}% agree within 1e-4 "
                     f"relative, {cmp['agree_floor'] * 100:.4f}% within 1e-4 of max(|value|, largest |value| "
                     f"{cmp['scale']:.4g}); |difference| median {cmp['median_abs']:.2e}, max {cmp['max_abs']:.2e}; "
                     f"{cmp['weight_mismatch']} pixels weighted in only one")
    else:
        lines.append(f"# mosaic shapes differ: reference {cmp['shape_ref']}, daskcal {cmp['shape_daskcal']}")
    lines.append(f"# outlier pixels flagged: reference {n_ref}, daskcal {n_dc}")
    if align_ref is None:
        lines.append(f"# alignment not run (injected relative misalignment {before:.0f} mas)")
    else:
        lines.append(f"# largest relative misalignment between exposures: injected {before:.0f} mas, after the "
                     f"reference's tweakreg {align_ref:.1f} mas, after daskcal's {align_dc:.1f} mas "
                     f"(reference fit: {', '.join(sorted(set(ref.get('fit_status', []))))})")
    line = f"# daskcal vs reference, same exposure: WCS differ by at most {sides['wcs_mas']:.3f} mas"
    if "levels" in sides:
        import numpy as np

        lr, ld = (np.array(v, float) for v in sides["levels"])
        line += (f"; sky levels (unit of data) differ by at most {np.max(np.abs(lr - ld)):.2e} (reference "
                 f"{', '.join(f'{v:.4f}' for v in lr[::2])} per group)")
    lines.append(line)
    if large is not None:
        steps_l = ", ".join(f"{k} {v:.1f}" for k, v in large["seconds"].items())
        lines.append(f"# {args.n_large} exposures, daskcal only: {large['total']:.1f} s ({steps_l}), summed peak "
                     f"{large['peak_mb']:.0f} MB (largest worker {large['worker_peak_mb']:.0f} MB) vs {dc['peak_mb']:.0f} MB "
                     f"for {args.n}: x{large['peak_mb'] / dc['peak_mb']:.2f}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
