"""image3 of a wide field of many exposures: how the time to build each step's graph, and to compute the mosaic,
grows with the number of exposures.

Simulates a G x G grid (default 20 x 20: 400) of S x S px exposures (default 256) at 0.1"/px, neighbours
overlapping by a quarter, each with its own sky level, noise, uniform variances and exposure time, and runs
``daskcal.image3`` on them (tweakreg off: the exposures have no stars; skymatch off with ``--no-skymatch``, see
``bench_skymatch.py`` for it) on dask's threaded scheduler. Reported: each step's seconds (building its graph,
and what it computes on the way), the mosaic's graph (layers, tasks) and the seconds to compute it, and the load
average.

Usage: ``python benchmarks/bench_wide.py [--grid 20] [--size 256] [--no-skymatch] [--out results/wide.txt]``
(``--out`` appends).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _proc import report


def field(grid: int, size: int) -> list:
    import numpy as np
    from astropy.modeling import models

    from daskcal.image._dataset import image_dataset
    from daskcal.image._simulate import distorted_wcs

    scale, step = 0.1, 0.75 * size
    tan = models.Pix2Sky_TAN() | models.RotateNative2Celestial(150.0, 2.0, 180.0)
    rng = np.random.default_rng(0)
    one, zero = np.ones((size, size), np.float32), np.zeros((size, size), np.float32)
    images = []
    for k in range(grid * grid):
        cx, cy = step * (k % grid), step * (k // grid)
        ra, dec = tan(-cx * scale / 3600.0, cy * scale / 3600.0)
        wcs = distorted_wcs((size, size), float(ra), float(dec), pixel_scale=scale, distortion=0.0)
        data = (100.0 + 3.0 * k + rng.normal(0.0, 1.0, (size, size))).astype(np.float32)
        images.append(image_dataset(data, wcs, err=one, dq=np.zeros((size, size), np.uint32), var_rnoise=one,
                                    var_poisson=zero, var_flat=zero, name=f"e{k}", group_id=f"g{k}",
                                    exposure_time=100.0))
    return images


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grid", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--no-skymatch", action="store_true")
    ap.add_argument("--out", default="results/wide.txt")
    args = ap.parse_args(argv)

    import dask

    import daskcal

    images = field(args.grid, args.size)
    load0 = os.getloadavg()[0]
    with dask.config.set(scheduler="threads"):
        t0 = time.perf_counter()
        result = daskcal.image3(images, tweakreg=False, skymatch=not args.no_skymatch)
        built = time.perf_counter() - t0
        graph = result.mosaic.__dask_graph__()
        t1 = time.perf_counter()
        result.mosaic.compute()
        computed = time.perf_counter() - t1
        result.cleanup()
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    lines = [
        (f"# {sys.argv[0]} --grid {args.grid} --size {args.size}{' --no-skymatch' if args.no_skymatch else ''}: "
         f"{len(images)} exposures of {args.size}^2 px, mosaic {tuple(result.mosaic.data.shape)}; threaded scheduler; "
         f"1-min load {load0:.2f} -> {os.getloadavg()[0]:.2f}"),
        (f"image3 (tweakreg off) returned in {built:.1f} s ({steps}); the mosaic's graph {len(graph.layers)} layers, "
         f"{len(graph)} tasks; computing it {computed:.1f} s"),
    ]
    report(lines, args.out)


if __name__ == "__main__":
    main()
