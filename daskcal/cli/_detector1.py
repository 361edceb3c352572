"""``daskcal detector1 IN OUT``: saturation, superbias, jumps and ramp fit on a cluster."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from daskcal.cli._common import add_cluster_options

__all__ = ["register", "execute", "run_recipe"]


def register(sub) -> None:
    from daskcal.detector._pipeline import step_parameters

    p = sub.add_parser(
        "detector1",
        help="run saturation, superbias, jump detection and ramp fitting on a ramp Zarr store",
        description="Run detector1 (saturation -> superbias -> jump -> ramp fit) on a ramp Zarr store "
        "(from 'daskcal ingest' or 'daskcal simulate') and write OUT/rate.zarr and OUT/rateints.zarr.",
    )
    p.add_argument("input", help="ramp Zarr store")
    p.add_argument("output", help="output directory (written atomically)")
    p.add_argument("--chunks", type=int, nargs=2, metavar=("CY", "CX"), default=None, help="(y, x) chunk size")
    p.add_argument("--fits", action="store_true", help="also export rate.fits and rateints.fits")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    for step, params in step_parameters().items():
        g = p.add_argument_group(f"{step} parameters")
        for name, default in params.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(default, bool):
                g.add_argument(flag, type=_parse_bool, default=default, metavar="BOOL", help=f"(default {default})")
            else:
                g.add_argument(flag, type=type(default), default=default, help=f"(default {default})")
    add_cluster_options(p)
    p.set_defaults(func=_main)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    msg = f"expected true or false; got {text!r}"
    raise argparse.ArgumentTypeError(msg)


def _main(args: argparse.Namespace) -> int:
    from daskcal.detector._pipeline import step_parameters

    params = {name: getattr(args, name) for names in step_parameters().values() for name in names}
    execute(args.input, args.output, params, args, chunks=args.chunks, fits=args.fits, overwrite=args.overwrite)
    return 0


def execute(input_path, output, params: dict, args, *, chunks=None, fits=False, overwrite=False) -> dict:
    """Open ``input_path``, build the detector1 graph, run it on the chosen cluster, write products."""
    from daskcal.cluster import connect
    from daskcal.detector._pipeline import detector1
    from daskcal.io._atomic import save_products
    from daskcal.io._ramps import open_ramps, to_fits

    if str(input_path).endswith(".fits"):
        msg = f"{input_path!r} is FITS; convert it first with 'daskcal ingest' (detector1 reads Zarr ramp stores)"
        raise ValueError(msg)
    ramps = open_ramps(input_path)
    result = detector1(ramps, chunks=tuple(chunks) if chunks else None, **params)  # validates before computing
    with connect(args.cluster, n_workers=args.workers, threads_per_worker=args.threads) as client:
        print(f"dashboard: {client.dashboard_link}")
        t0 = time.perf_counter()
        paths = save_products(
            {"rate": result.rate, "rateints": result.rateints}, output, overwrite=overwrite, progress=not args.no_progress
        )
        elapsed = time.perf_counter() - t0
    if fits:
        import xarray as xr

        for name, store in paths.items():
            with xr.open_zarr(store, consolidated=False) as ds:
                to_fits(ds, Path(output) / f"{name}.fits", overwrite=True)
    n = ramps.sizes
    mpg = n["integration"] * n["group"] * n["y"] * n["x"] / 1e6
    print(f"detector1: {mpg:.1f} Mpix*groups in {elapsed:.1f} s ({mpg / elapsed:.1f} Mpix*groups/s)")
    for name, store in paths.items():
        print(f"{name}: {store}")
    return paths


def run_recipe(inputs: list[str], output: str, steps: dict, execution: dict, args) -> int:
    """Run a ``pipeline = "detector1"`` recipe (see graphs/detector1.toml)."""
    from daskcal.detector._pipeline import step_parameters

    if len(inputs) != 1:
        msg = f"the detector1 pipeline takes one ramp store; got {len(inputs)} inputs"
        raise ValueError(msg)
    known = step_parameters()
    params = {}
    for step, values in steps.items():
        if step not in known:
            msg = f"recipe step {step!r} is not a detector1 step; expected one of {list(known)}"
            raise ValueError(msg)
        for name, value in values.items():
            if name not in known[step]:
                msg = f"recipe parameter steps.{step}.{name} is unknown; expected one of {list(known[step])}"
                raise ValueError(msg)
            params[name] = value
    chunks = execution.get("chunks")
    execute(inputs[0], output, params, args, chunks=chunks, fits=args.fits, overwrite=args.overwrite)
    return 0
