"""``daskcal simulate-images OUTDIR``: write seeded, simulated calibrated exposures and their association."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["association", "register"]

#: Name of the association written beside the exposures.
ASN_NAME = "asn.json"
#: Name of the association's product (``daskcal image3 asn.json OUT`` writes ``OUT/<name>_i2d.zarr``).
PRODUCT_NAME = "sim"


def register(sub) -> None:
    p = sub.add_parser(
        "simulate-images",
        help="write seeded, simulated calibrated exposures (Zarr or _cal.fits) and their asn.json",
        description="Simulate dithered, distorted calibrated exposures of one star field (sky, stars, noise, bad "
        "pixels, cosmic rays; as daskcal.simulate_images) and write them into OUTDIR as image Zarr stores "
        "(OUTDIR/sim000_cal.zarr, ...) or JWST-style _cal.fits files (OUTDIR/sim000_cal.fits, ...), with "
        f"an association OUTDIR/{ASN_NAME} naming them all: the inputs of 'daskcal outliers', 'daskcal resample' "
        "and 'daskcal image3'. The files appear together when all are written.",
    )
    p.add_argument("output", metavar="OUTDIR", help="folder to write into (created if missing; nothing else in it is touched)")
    p.add_argument("-n", "--exposures", type=int, default=8, metavar="N",
                   help="number of exposures, each its own exposure group (default 8)")
    p.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("NY", "NX"),
                   help="rows and columns of each image, px (default 512 512; at least 8 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same data (default 0)")
    p.add_argument("--cosmic-rays", type=int, default=0, metavar="K",
                   help="single-pixel cosmic rays injected into each image (default 0)")
    p.add_argument("--format", choices=("zarr", "fits"), default="zarr",
                   help="zarr: image Zarr stores <name>.zarr; fits: JWST-style <name>.fits files (default zarr)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing exposures and asn.json of the same names (nothing else)")
    p.set_defaults(func=_main)


def association(names: list[str], *, product: str = PRODUCT_NAME) -> dict:
    """A jwst-style image3 association of the files ``names`` (relative to its folder), all science members."""
    return {
        "asn_type": "image3",
        "asn_rule": "daskcal_simulate_images",
        "asn_pool": "none",
        "asn_id": "a3001",
        "products": [{"name": product, "members": [{"expname": n, "exptype": "science"} for n in names]}],
    }


def _main(args: argparse.Namespace) -> int:
    from daskcal.image._fits_write import write_cal_fits
    from daskcal.image._simulate import simulate_images
    from daskcal.io._atomic import save_products
    from daskcal.io._outputs import OutputSet

    if args.exposures < 1:
        msg = f"--exposures must be at least 1; got {args.exposures}"
        raise ValueError(msg)
    if args.cosmic_rays < 0:
        msg = f"--cosmic-rays must not be negative; got {args.cosmic_rays}"
        raise ValueError(msg)
    out = Path(args.output)
    images = {str(ds.attrs["name"]): ds for ds in
              simulate_images(args.exposures, tuple(args.shape), seed=args.seed, cosmic_rays=args.cosmic_rays).images}
    suffix = ".zarr" if args.format == "zarr" else ".fits"
    files = {name: out / f"{name}{suffix}" for name in images}
    asn = out / ASN_NAME
    with OutputSet([*files.values(), asn], overwrite=args.overwrite) as outputs:
        if args.format == "zarr":
            save_products(images, out, outputs=outputs)
        else:
            for name, ds in images.items():
                write_cal_fits(ds, outputs.path(files[name]))
        outputs.path(asn).write_text(json.dumps(association([f.name for f in files.values()]), indent=2) + "\n")
        outputs.commit()
    first, *_, last = [*files.values()] * 2  # the first and last (the same one when there is one)
    print(f"{len(files)} exposures of {args.shape[0]}x{args.shape[1]} px: {first} ... {last}")
    print(f"association: {asn}")
    return 0
