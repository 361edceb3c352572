"""Reference outlier detection built from stcal 1.20's utilities and drizzle (the oracle).

The steps of JWST's imaging outlier detection with ``resample_data=True``: single
drizzle per exposure group onto the given output grid, weights below
``maskpt`` x the group's clipped mean weight masked, median with stcal's
MedianComputer, ``gwcs_blot`` of the median onto each input, ``flag_resampled_crs``.
"""

from __future__ import annotations

import copy

import numpy as np


def reference_outliers(images, out_wcs, snr=(5.0, 4.0), scale=(1.2, 0.7), backg=0.0, maskpt=0.7,
                       kernel="square", pixfrac=1.0, good_bits="~DO_NOT_USE"):
    from drizzle.resample import Drizzle
    from stcal.outlier_detection.median import MedianComputer
    from stcal.outlier_detection.utils import compute_weight_threshold, flag_resampled_crs, gwcs_blot
    from stcal.resample.utils import build_driz_weight, calc_pixmap

    from daskcal.dq import DQ, dq_dict
    from daskcal.image._dataset import get_wcs

    out_wcs = copy.deepcopy(out_wcs)
    out_shape = tuple(out_wcs.array_shape)
    groups = list(dict.fromkeys(ds.attrs["group_id"] for ds in images))
    mc = MedianComputer((len(groups), *out_shape), in_memory=True)
    for gi, g in enumerate(groups):
        driz = Drizzle(kernel=kernel, fillval="NaN", out_shape=out_shape, disable_ctx=True)
        for ds in images:
            if ds.attrs["group_id"] != g:
                continue
            model = {"data": ds["data"].values, "dq": ds["dq"].values, "var_rnoise": ds["var_rnoise"].values}
            weight = build_driz_weight(model, weight_type="ivm", good_bits=good_bits, flag_name_map=dq_dict())
            pixmap = calc_pixmap(copy.deepcopy(get_wcs(ds)), out_wcs, ds["data"].shape)
            driz.add_image(model["data"], exptime=ds.attrs["exposure_time"], pixmap=pixmap, weight_map=weight,
                           pixfrac=pixfrac, in_units="cps")
        thr = compute_weight_threshold(driz.out_wht, maskpt)
        data = driz.out_img.copy()
        data[driz.out_wht < thr] = np.nan
        mc.append(data, gi)
    median = mc.evaluate()
    dqs = []
    for ds in images:
        blot = gwcs_blot(median, out_wcs, ds["data"].shape, copy.deepcopy(get_wcs(ds)))
        mask = flag_resampled_crs(ds["data"].values, ds["err"].values, blot, snr[0], snr[1], scale[0], scale[1], backg)
        dq = ds["dq"].values.copy()
        dq[mask] |= np.uint32(DQ.OUTLIER | DQ.DO_NOT_USE)
        dqs.append(dq)
    return median, dqs
