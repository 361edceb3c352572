"""Warm-ups of the image stage's numba kernels (see :mod:`daskcal._precompile`).

Each runs the public step (:func:`daskcal.resample`, :func:`daskcal.flag_outliers`)
on two tiny 24 x 24 exposures, in the calling thread on the synchronous scheduler,
with the options of a run that choose which kernels run and the dtypes of the run's
images, so it compiles whatever kernels the step uses without knowing them.

The tiny exposures are built directly (no star field, no fitted WCS inverse: what
:func:`daskcal.simulate_images` spends most of its time on), with the models a simulated
exposure's WCS has, so the pixel map is the same compiled program. Their WCS goes through
ASDF once per process, as every image dataset carries it (``wcs_asdf``).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["OUTLIERS_COMPILE_SECONDS", "RESAMPLE_COMPILE_SECONDS", "compile_outlier_kernels",
           "compile_resample_kernels"]

#: Seconds resample's kernels take to compile on a first run (2 cores, unloaded).
RESAMPLE_COMPILE_SECONDS = 3
#: Seconds outlier detection's kernels take to compile on a first run (2 cores, unloaded).
OUTLIERS_COMPILE_SECONDS = 5

#: Options of :func:`daskcal.resample` that choose kernels; the others set the output grid.
_KERNEL_OPTIONS = ("pixfrac", "kernel", "fillval", "weight_type", "good_bits", "enable_ctx", "enable_var",
                   "compute_err", "propagate_dq", "single")
#: Options of :func:`daskcal.flag_outliers` that do not choose kernels (output grid, memory, where to write).
_OUTLIER_GRID_OPTIONS = ("buffer_size", "tile_shape", "tempdir", "output_wcs", "block_rows")


def _tiny_wcs():
    """A 24 x 24 WCS of a simulated exposure's models (:func:`~daskcal.image._simulate.distorted_wcs`:
    shift, cubic distortion with a polynomial inverse, TAN), built without fitting: its distortion
    (0.0288 px at the corners) is small enough for the series inverse, within 2e-4 px."""
    from daskcal.image._simulate import DEC0, RA0, distorted_wcs

    return distorted_wcs((24, 24), RA0, DEC0, distortion=0.0288, fit_inverse=False)


@functools.cache
def _tiny_images() -> tuple:
    """Two 24 x 24 exposures on one WCS (:func:`_tiny_wcs`): flat sky, noise, a few flagged pixels,
    a cosmic ray in each; the variables of a simulated exposure, float32 and uint32."""
    from daskcal.dq import DQ
    from daskcal.image._dataset import image_dataset

    rng = np.random.default_rng(0)
    shape = (24, 24)
    wcs = _tiny_wcs()
    images = []
    for i in range(2):
        var = np.full(shape, 0.01, np.float32)
        data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        dq = np.zeros(shape, np.uint32)
        dq[3, 5], dq[7, 11] = DQ.DO_NOT_USE, DQ.JUMP_DET
        data[12 + i, 12] = 50.0  # a cosmic ray, at a different pixel in each
        attrs = {"exposure_time": 100.0, "measurement_time": 95.0, "start_time": 60000.0 + i * 0.01,
                 "group_id": f"exp{i}", "name": f"tiny{i}_cal", "level": 1.0, "bunit_data": "DN/s"}
        if images:  # the first's WCS text, not a second ASDF write
            attrs = {**images[0].attrs, **attrs, "end_time": attrs["start_time"] + 100.0 / 86400.0}
            arrays = {"data": data, "dq": dq, "var_rnoise": var, "var_poisson": var, "var_flat": var,
                      "err": np.sqrt(3 * var)}
            images.append(images[0].copy(data={k: arrays[k] for k in images[0].data_vars}).assign_attrs(attrs))
        else:
            images.append(image_dataset(data, wcs, dq=dq, var_rnoise=var, var_poisson=var, var_flat=var, **attrs))
    return tuple(images)


def _tiny_like(images) -> list:
    """Two tiny exposures (:func:`_tiny_images`) whose variables have the dtypes of ``images[0]``'s."""
    like = images[0]
    return [im.assign({name: im[name].astype(like[name].dtype) for name in im.data_vars if name in like})
            for im in _tiny_images()]


def compile_resample_kernels(images, **options) -> None:
    """Resample two simulated 24 x 24 exposures with ``options``, on the synchronous scheduler.

    Parameters
    ----------
    images : list of xarray.Dataset
        The run's images: the simulated ones take the dtypes of their variables.
    **options
        The run's keywords of :func:`daskcal.resample`; those that only set the output
        grid (``pixel_scale``, ``output_shape``, ...) are not used.
    """
    from daskcal.image._resample import resample

    kwargs = {k: v for k, v in options.items() if k in _KERNEL_OPTIONS}
    resample(_tiny_like(images), **kwargs).compute(scheduler="sync")


def compile_outlier_kernels(images, **options) -> None:
    """Flag outliers in two simulated 24 x 24 exposures with ``options``, on the synchronous scheduler.

    Parameters
    ----------
    images : list of xarray.Dataset
        The run's images: the simulated ones take the dtypes of their variables.
    **options
        The run's keywords of :func:`daskcal.flag_outliers`; those of the output grid,
        memory and temporary directory are not used.
    """
    import dask

    from daskcal.image._outliers import flag_outliers

    kwargs = {k: v for k, v in options.items() if k not in _OUTLIER_GRID_OPTIONS}
    result = flag_outliers(_tiny_like(images), **kwargs)
    try:
        dask.compute([im["dq"] for im in result.images], result.median, scheduler="sync")
    finally:
        result.cleanup()
