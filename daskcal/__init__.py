"""daskcal: stcal's calibration algorithms as Dask task graphs.

Public API (imported lazily on first use)::

    daskcal.simulate, daskcal.open_ramps, daskcal.ingest, daskcal.save, daskcal.to_fits
    daskcal.flag_saturation, daskcal.detect_jumps, daskcal.fit_ramps, daskcal.detector1
    daskcal.image_dataset, daskcal.get_wcs, daskcal.open_images, daskcal.simulate_images
    daskcal.output_wcs, daskcal.resample, daskcal.flag_outliers, daskcal.MedianComputer
    daskcal.align, daskcal.match_sky, daskcal.image3, daskcal.read_association
    daskcal.write_cal_fits, daskcal.write_crf_fits, daskcal.read_fits_wcs
    daskcal.DQ
"""

from daskcal._lazy import lazy_getattr

__version__ = "0.1.0"

_EXPORTS = {
    "DQ": "daskcal.dq",
    "connect": "daskcal.cluster",
    # detector stage
    "simulate": "daskcal._simulate",
    "open_ramps": "daskcal.io._ramps",
    "ingest": "daskcal.io._ramps",
    "to_fits": "daskcal.io._export",
    "save": "daskcal.io._atomic",
    "flag_saturation": "daskcal.detector._saturation",
    "detect_jumps": "daskcal.detector._jump",
    "fit_ramps": "daskcal.detector._ramp_fit",
    "RampFitResult": "daskcal.detector._ramp_fit",
    "subtract_superbias": "daskcal.detector._pipeline",
    "detector1": "daskcal.detector._pipeline",
    # image stage
    "image_dataset": "daskcal.image._dataset",
    "get_wcs": "daskcal.image._dataset",
    "open_images": "daskcal.image._io",
    "write_cal_fits": "daskcal.image._fits_write",
    "write_crf_fits": "daskcal.image._fits_write",
    "read_fits_wcs": "daskcal.image._fits_write",
    "read_association": "daskcal.image._io",
    "simulate_images": "daskcal.image._simulate",
    "output_wcs": "daskcal.image._grid",
    "resample": "daskcal.image._resample",
    "flag_outliers": "daskcal.image._outliers",
    "OutlierResult": "daskcal.image._outliers",
    "MedianComputer": "daskcal.image._median",
    "image3": "daskcal.image._pipeline",
    "Image3Result": "daskcal.image._pipeline",
    "align": "daskcal.image._align",
    "AlignResult": "daskcal.image._align",
    "match_sky": "daskcal.image._skymatch",
    "SkyMatchResult": "daskcal.image._skymatch",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__():
    return __all__
