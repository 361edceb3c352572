"""What made a product, and whether an earlier run already made it as this run would (``--resume``).

Every product of a command that can resume records the run that made it under one attribute,
:data:`RUN_ATTR` (a Zarr store's root attributes; the :data:`FITS_KEY` keyword of a FITS export's
primary header, as JSON): the command, the input's resolved path and :func:`fingerprint`, every
parameter's value, the chunking and daskcal's version.

:func:`done_before` compares an exposure's products with the record this run would write: all
present, complete and recorded alike -> done; none present -> to do; anything else is an error
that names the product and the first difference. Nothing is ever deleted here.

The fingerprint is cheap, not a checksum: the size and modification time of each ``zarr.json``
of the input store. Rewriting the store (``daskcal.save``, ``daskcal ingest``) changes it; a chunk
file edited in place does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["FITS_KEY", "RUN_ATTR", "done_before", "fingerprint", "read_record", "run_record"]

#: The product attribute that holds the record of the run that made it.
RUN_ATTR = "daskcal_run"
#: The FITS primary-header keyword that holds the same record, as JSON.
FITS_KEY = "DCALRUN"

_REDO = "pass --overwrite instead of --resume to redo it"


def fingerprint(store: str | os.PathLike) -> dict[str, str]:
    """``{"zarr.json": version, "<array>": version, ...}`` of a local Zarr store: each ``zarr.json``'s
    modification time (ns) and size (see :class:`daskcal.io._zarr_read.ZarrSource`)."""
    from daskcal.io._zarr_read import ZarrSource

    root = Path(store)
    st = (root / "zarr.json").stat()
    out = {"zarr.json": f"{st.st_mtime_ns}-{st.st_size}"}
    for entry in sorted(root.iterdir()):
        if (entry / "zarr.json").is_file():
            out[entry.name] = ZarrSource.at(root, entry.name).version
    return out


def run_record(command: str, input_path: str | os.PathLike, parameters: dict, chunks) -> dict:
    """The record a product of this run carries (JSON values only).

    Parameters
    ----------
    command : str
        The command, e.g. ``"detector1"``.
    input_path : path-like
        The input store (a local Zarr store).
    parameters : dict
        Every parameter's effective value.
    chunks : sequence of int or None
        The products' ``(y, x)`` chunk shape.
    """
    from daskcal import __version__

    record = {"command": command, "input": str(Path(input_path).resolve()),
              "input_fingerprint": fingerprint(input_path), "parameters": dict(sorted(parameters.items())),
              "chunks": None if chunks is None else list(chunks), "daskcal": __version__}
    return json.loads(json.dumps(record, default=str))  # tuples as lists, as the product will hold them


def read_record(product: str | os.PathLike) -> dict | None:
    """The run record of a product (a Zarr store or a FITS file), or None if it has none.

    Raises
    ------
    ValueError
        The product is incomplete (a Zarr store without its root ``zarr.json``) or unreadable.
    """
    product = Path(product)
    try:
        if product.suffix == ".fits":
            from astropy.io import fits

            text = fits.getval(product, FITS_KEY, ext=0) if FITS_KEY in fits.getheader(product, 0) else None
            return None if text is None else json.loads(text)
        meta = product / "zarr.json"
        if not meta.is_file():
            msg = (f"{product} is incomplete (it has no zarr.json: a run was stopped while writing it?); "
                   f"{_REDO}")
            raise ValueError(msg)
        record = json.loads(meta.read_text()).get("attributes", {}).get(RUN_ATTR)
        return record if isinstance(record, dict) else None
    except (OSError, ValueError) as exc:
        if str(product) in str(exc):
            raise
        msg = f"{product} cannot be read ({type(exc).__name__}: {exc}); {_REDO}"
        raise ValueError(msg) from exc


def done_before(products: list[Path], record: dict) -> bool:
    """Whether an earlier run made every one of ``products`` as this run (``record``) would.

    Returns False when none of them exists (they are to be made).

    Raises
    ------
    ValueError
        Some exist and others do not; or one is incomplete, has no record, or was made by a run
        that differs from this one (the message names the product and the first difference).
    """
    present = [p for p in products if os.path.lexists(p)]
    if not present:
        return False
    if len(present) < len(products):
        missing = [p for p in products if p not in present]
        hint = " (an earlier run without --fits?)" if all(p.suffix == ".fits" for p in missing) else ""
        msg = (f"{', '.join(map(str, present))} exist{'s' if len(present) == 1 else ''} but not "
               f"{', '.join(map(str, missing))}{hint}: resume needs all or none of an exposure's products; {_REDO}")
        raise ValueError(msg)
    for product in products:
        recorded = read_record(product)
        if recorded is None:
            msg = (f"{product} has no record of the run that made it (another program, or daskcal before "
                   f"--resume), so it cannot be resumed; {_REDO}")
            raise ValueError(msg)
        difference = _difference(recorded, record)
        if difference is not None:
            raise ValueError(f"{product} {difference}; {_REDO}")
    return True


def _difference(recorded: dict, wanted: dict) -> str | None:
    """The first difference between the record a product carries and this run's, as the end of a
    sentence whose subject is the product; None if they are equal."""
    if recorded == wanted:
        return None
    if recorded.get("command") != wanted["command"]:
        return f"was made by 'daskcal {recorded.get('command')}', not 'daskcal {wanted['command']}'"
    if recorded.get("input") != wanted["input"]:
        return f"was made from {recorded.get('input')}; this run reads {wanted['input']}"
    then, now = recorded.get("input_fingerprint") or {}, wanted["input_fingerprint"]
    if then != now:
        changed = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
        return (f"was made from {wanted['input']} as it was then (its data changed since: "
                f"{', '.join(changed)} rewritten)")
    then, now = recorded.get("parameters") or {}, wanted["parameters"]
    for name in [*now, *(n for n in then if n not in now)]:
        if name not in then:
            return f"was made without the parameter {name}; this run has {name}={now[name]!r}"
        if name not in now:
            return f"was made with {name}={then[name]!r}, a parameter this run does not have"
        if then[name] != now[name]:
            return f"was made with {name}={then[name]!r}; this run has {now[name]!r}"
    if recorded.get("chunks") != wanted["chunks"]:
        return f"was made in chunks of {recorded.get('chunks')}; this run has {wanted['chunks']} (--chunks)"
    if recorded.get("daskcal") != wanted["daskcal"]:
        return f"was made by daskcal {recorded.get('daskcal')}; this is daskcal {wanted['daskcal']}"
    return "was made by a run whose record differs from this run's"
