"""A warm-up of the image stage's numba kernels (see :mod:`daskcal._precompile`).

The warm-up resamples two simulated 24 x 24 exposures through the public
:func:`daskcal.resample`, in the calling thread, with the options of a run that
choose which kernels run and the dtypes of the run's images, so it compiles whatever
kernels resample uses without knowing them.
"""

from __future__ import annotations

__all__ = ["RESAMPLE_COMPILE_SECONDS", "compile_resample_kernels"]

#: Seconds resample's kernels take to compile on a first run (2 cores, unloaded).
RESAMPLE_COMPILE_SECONDS = 3

#: Options of :func:`daskcal.resample` that choose kernels; the others set the output grid.
_KERNEL_OPTIONS = ("pixfrac", "kernel", "fillval", "weight_type", "good_bits", "enable_ctx", "enable_var",
                   "compute_err", "propagate_dq", "single")


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
    from daskcal.image._simulate import simulate_images

    like = images[0]
    tiny = [im.assign({name: im[name].astype(like[name].dtype) for name in im.data_vars if name in like})
            for im in simulate_images(2, (24, 24), seed=0, n_stars=2).images]
    kwargs = {k: v for k, v in options.items() if k in _KERNEL_OPTIONS}
    resample(tiny, **kwargs).compute(scheduler="sync")
