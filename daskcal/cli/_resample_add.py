"""``daskcal resample --add INPUTS... -o MOSAIC.zarr``: add exposures to an existing mosaic (issue 16)."""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["execute_add"]


def execute_add(inputs, output, params: dict, args, *, fits: bool = False, overwrite: bool = False,
                resume: bool = False) -> Path:
    """Add the exposures ``inputs`` to the mosaic ``output``, rewriting only the tiles they reach.

    The grown mosaic is written in the resume folder beside ``output``
    (:func:`daskcal.io._outputs.resume_folder`): its metadata, the tiles the new exposures reach
    (each recorded with its checksums, :mod:`daskcal.io._journal`), and the stored mosaic's other
    tiles as hard links to its chunk files (:func:`daskcal.io._grow_store.carry_unchanged`). It
    then takes ``output``'s place in one step (:meth:`daskcal.io._outputs.OutputSet.commit`,
    :func:`daskcal.io._outputs.rename_exchange`): a reader sees the old mosaic or the grown one. An addition that stops leaves ``output`` as it was and
    its partial work in the resume folder; ``resume`` continues it if it was begun by the same
    command on the same mosaic (its tiles verified are kept), and any other run removes it.
    """
    from daskcal._precompile import precompile
    from daskcal.cli._common import ClusterStart
    from daskcal.cli._resample import _journal, _library_kwargs, _record
    from daskcal.image._grow import UPDATED_TILES, stored_attrs
    from daskcal.image._io import expand_inputs, open_images
    from daskcal.image._resample import resample
    from daskcal.image._warm_up import (
        RESAMPLE_COMPILE_SECONDS,
        compile_resample_kernels,
    )
    from daskcal.io._atomic import write_zarr
    from daskcal.io._grow_store import carry_unchanged
    from daskcal.io._outputs import OutputSet
    from daskcal.io._resume import check_partial, input_fingerprint

    if overwrite:
        msg = "--add adds to the mosaic OUT and --overwrite replaces it: give one of them"
        raise ValueError(msg)
    if fits:
        msg = ("--fits cannot be combined with --add (the FITS export would be of the old mosaic); export the grown "
               "mosaic with daskcal.to_fits")
        raise ValueError(msg)
    output = Path(output)
    stored = stored_attrs(output)  # refused before any cluster starts: not a mosaic daskcal can add to
    members = expand_inputs(inputs, allow_outside_asn=getattr(args, "allow_outside_asn", False))
    read = list(dict.fromkeys(str(p) for p in [*inputs, *members]))
    tile_shape = list(stored["tile_shape"])
    # the record names the mosaic as it is now: a partial addition to it is resumed only while it is unchanged
    record = _record(read, {**params, "add_to": str(output.resolve()), "add_to_version": input_fingerprint(output),
                            "tile_shape": tile_shape}, tile_shape)
    record["command"] = "resample --add"
    if resume:
        check_partial(output, record)
    outputs = OutputSet([output], overwrite=True, inputs=read, resumable=[output], resume=resume)
    outputs.check()
    with ClusterStart(args, background=not resume) as cluster:
        images = open_images(inputs, allow_outside_asn=getattr(args, "allow_outside_asn", False))
        mpix = sum(im["data"].size for im in images) / 1e6
        kwargs = {k: v for k, v in _library_kwargs(params).items() if k != "tile_shape"}
        with outputs:
            kernels = precompile(lambda: compile_resample_kernels(images, **kwargs), estimate=RESAMPLE_COMPILE_SECONDS)
            with cluster.client() as client:
                kernels.wait()
                # every check (exposures already in the mosaic, outside its grid, parameters) runs here
                mosaic = resample(images, into=output, **kwargs)
                updated = {tuple(t) for t in mosaic.attrs[UPDATED_TILES]}
                written = {tuple(t) for t in _written(output)}
                print(f"resample --add: {len(images)} inputs ({mpix:.1f} Mpix) to {output} "
                      f"({len(stored['inputs'])} inputs): {len(updated)} of its tiles to rewrite")
                journal = _journal(mosaic, output, record, client, resume=resume, command="resample --add",
                                   partial="addition")
                t0 = time.perf_counter()
                staged = outputs.path(output)
                unchanged = frozenset(written - updated)
                write_zarr(mosaic, staged, progress=not args.no_progress, journal=journal, unchanged=unchanged)
                carried = carry_unchanged(output, staged, unchanged)
                elapsed = time.perf_counter() - t0
            outputs.commit()  # the grown mosaic replaces the old one whole
    print(f"resample --add: {len(updated)} tiles rewritten, {carried} chunk files of {len(unchanged)} tiles kept, "
          f"in {elapsed:.1f} s")
    print(f"mosaic: {output}")
    return output


def _written(store: Path) -> list:
    """The ``[iy, ix]`` tiles the stored mosaic has written."""
    from daskcal.image._grow import _written_tiles
    from daskcal.io._zarr_read import ZarrSource

    return sorted(_written_tiles(ZarrSource.at(store, "data")))
