"""``daskcal simulate OUT``: write a seeded simulated exposure (Zarr ramps, optionally FITS)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="write a seeded, simulated up-the-ramp exposure",
        description="Simulate ramps (sky, sources, Poisson and read noise, bias, saturation, cosmic rays, "
        "bad pixels) and write them as a Zarr ramp store OUT (and the truth as OUT_truth.zarr).",
    )
    p.add_argument("output", help="ramp Zarr store to write (e.g. ramps.zarr)")
    p.add_argument("--shape", type=int, nargs=4, default=(1, 10, 1024, 1024), metavar=("NINTS", "NGROUPS", "NY", "NX"),
                   help="integrations, groups per integration, rows and columns of the cube (default 1 10 1024 1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same data (default 0)")
    p.add_argument("--chunks", type=int, nargs=2, default=None, metavar=("CY", "CX"),
                   help="(y, x) pixels per chunk (default: sized by the cube, 512 1024 for 10 groups of 2048x2048)")
    p.add_argument("--group-time", type=float, default=10.737, help="time between groups, s (default 10.737)")
    p.add_argument("--snowballs", type=int, default=0, metavar="N",
                   help="inject N snowballs per integration (saturated core, fading jump halo; default 0)")
    p.add_argument("--showers", type=int, default=0, metavar="N",
                   help="inject N showers per integration (faint 30 DN disks of radius 6-12 px; default 0)")
    p.add_argument("--fits", action="store_true", help="also write a JWST-style _uncal.fits and reference FITS images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from daskcal._simulate import simulate
    from daskcal.detector._common import default_chunk_yx
    from daskcal.io._atomic import save_dataset
    from daskcal.io._ramps import write_uncal

    from daskcal.cli._common import chunk_option

    shape = tuple(args.shape)
    sim = simulate(shape, seed=args.seed, group_time=args.group_time, frame_time=args.group_time,
                   snowballs=args.snowballs, showers=args.showers, chunks=chunk_option(args.chunks) or default_chunk_yx(shape))
    out = Path(args.output)
    save_dataset(sim.ramps, out, overwrite=args.overwrite)
    truth = out.with_name(out.name.removesuffix(".zarr") + "_truth.zarr")
    save_dataset(sim.truth, truth, overwrite=args.overwrite)
    print(f"ramps: {out}\ntruth: {truth}")
    if args.fits:
        uncal = out.with_name(out.name.removesuffix(".zarr") + "_uncal.fits")
        for name, path in write_uncal(sim.ramps, uncal, overwrite=args.overwrite).items():
            print(f"{name}: {path}")
    return 0
