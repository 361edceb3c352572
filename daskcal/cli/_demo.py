"""``daskcal demo``: simulate an exposure and run detector1 on an embedded LocalCluster."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from daskcal.cli._common import add_cluster_options

__all__ = ["register"]


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="simulate an exposure and run detector1 on a local Dask cluster (the quick start)",
        description="Simulate a seeded exposure, run detector1 on an embedded LocalCluster (or --cluster), "
        "write the products under OUT (default ./daskcal-output, replaced on every run) and compare "
        "them with the simulation's truth.",
    )
    p.add_argument("--out", default="daskcal-output", help="output directory (default ./daskcal-output)")
    p.add_argument("--shape", type=int, nargs=4, default=(2, 10, 1024, 1024), metavar=("NINTS", "NGROUPS", "NY", "NX"),
                   help="integrations, groups per integration, rows and columns of the simulated cube "
                   "(default 2 10 1024 1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulation (default 0)")
    p.add_argument("--chunks", type=int, nargs=2, default=(256, 256), metavar=("CY", "CX"),
                   help="(y, x) pixels per chunk of the simulated store and of detector1 (default 256 256)")
    add_cluster_options(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import xarray as xr

    from daskcal._simulate import simulate
    from daskcal.cli._detector1 import execute
    from daskcal.io._atomic import save_dataset

    from daskcal.cli._common import chunk_option

    out = Path(args.out)
    chunks = chunk_option(args.chunks)
    sim = simulate(tuple(args.shape), seed=args.seed, chunks=chunks)
    ramps_path = save_dataset(sim.ramps, out / "ramps.zarr", overwrite=True)
    save_dataset(sim.truth, out / "truth.zarr", overwrite=True)
    print(f"simulated ramps {tuple(args.shape)}: {ramps_path}")
    paths = execute(ramps_path, out / "detector1", {}, args, chunks=chunks, overwrite=True)
    with xr.open_zarr(paths["rate"], consolidated=False) as rate:
        z = ((rate["data"] - sim.truth["rate"]) / rate["err"]).values
    clean = ~(sim.truth["jumps"].any(("integration", "group")) | sim.truth["saturates"].any("integration")
              | sim.truth["dead"] | sim.truth["hot"]).values
    med = float(np.nanmedian(np.abs(z[clean])))
    print(f"rate vs truth on {int(clean.sum())} clean pixels: median |rate - truth| / err = {med:.3f} (0.674 expected)")
    return 0
