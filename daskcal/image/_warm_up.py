"""Warm-ups of the image stage's numba kernels (see :mod:`daskcal._precompile`).

Each runs the public step (:func:`daskcal.resample`, :func:`daskcal.flag_outliers`)
on two simulated 24 x 24 exposures, in the calling thread on the synchronous scheduler,
with the options of a run that choose which kernels run and the dtypes of the run's
images, so it compiles whatever kernels the step uses without knowing them.
"""

from __future__ import annotations

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


def _tiny_like(images) -> list:
    """Two simulated 24 x 24 exposures whose variables have the dtypes of ``images[0]``'s."""
    from daskcal.image._simulate import simulate_images

    like = images[0]
    return [im.assign({name: im[name].astype(like[name].dtype) for name in im.data_vars if name in like})
            for im in simulate_images(2, (24, 24), seed=0, n_stars=2).images]


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
