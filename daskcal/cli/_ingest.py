"""``daskcal ingest UNCAL OUT``: JWST-style _uncal.fits + reference images -> Zarr ramp store."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "ingest",
        help="convert a JWST-style _uncal.fits and reference FITS images into a Zarr ramp store",
        description="Read SCI/GROUPDQ/PIXELDQ and TGROUP/TFRAME/NFRAMES/GROUPGAP from an _uncal.fits file, "
        "and gain (e-/DN), read noise (DN, CDS), saturation (DN) and optional superbias (DN) images, "
        "and write the Zarr ramp store detector1 reads.",
    )
    p.add_argument("uncal", help="_uncal.fits file")
    p.add_argument("output", help="Zarr store to write")
    p.add_argument("--gain", required=True, help="gain reference FITS (e-/DN)")
    p.add_argument("--readnoise", required=True, help="read-noise reference FITS (DN, CDS)")
    p.add_argument("--saturation", required=True, help="saturation reference FITS (DN)")
    p.add_argument("--superbias", default=None, help="superbias reference FITS (DN)")
    p.add_argument("--chunks", type=int, nargs=2, default=None, metavar=("CY", "CX"),
                   help="(y, x) pixels per chunk (default: sized by the cube, 512 1024 for 10 groups of 2048x2048)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output store")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from daskcal.cli._common import chunk_option
    from daskcal.io._ramps import ingest

    ds = ingest(
        args.uncal,
        gain=args.gain,
        readnoise=args.readnoise,
        saturation=args.saturation,
        superbias=args.superbias,
        out=args.output,
        chunks=chunk_option(args.chunks),
        overwrite=args.overwrite,
    )
    print(f"ramps: {args.output} {dict(ds.sizes)}")
    return 0
