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

__all__ = ["FITS_KEY", "RUN_ATTR", "check_partial", "dataset_record", "done_before", "fingerprint", "input_fingerprint", "partial_record",
           "read_record", "run_record"]

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


def input_fingerprint(path: str | os.PathLike):
    """:func:`fingerprint` of a Zarr store; ``"<mtime ns>-<size>"`` of a file (a FITS image, an association)."""
    path = Path(path)
    if path.is_dir():
        return fingerprint(path)
    st = path.stat()
    return f"{st.st_mtime_ns}-{st.st_size}"


def run_record(command: str, input_path, parameters: dict, chunks) -> dict:
    """The record a product of this run carries (JSON values only).

    Parameters
    ----------
    command : str
        The command, e.g. ``"detector1"``.
    input_path : path-like or list of path-like
        The input store (a local Zarr store); or every input (stores, files), each recorded by its
        resolved path and :func:`input_fingerprint`.
    parameters : dict
        Every parameter's effective value.
    chunks : sequence of int or None
        The products' ``(y, x)`` chunk shape.
    """
    from daskcal import __version__

    if isinstance(input_path, (str, os.PathLike)):
        inputs, prints = str(Path(input_path).resolve()), fingerprint(input_path)
    else:
        inputs = [str(Path(p).resolve()) for p in input_path]
        prints = {str(Path(p).resolve()): input_fingerprint(p) for p in input_path}
    record = {"command": command, "input": inputs,
              "input_fingerprint": prints, "parameters": dict(sorted(parameters.items())),
              "chunks": None if chunks is None else list(chunks), "daskcal": __version__}
    return json.loads(json.dumps(record, default=str))  # tuples as lists, as the product will hold them


def dataset_record(ds) -> dict:
    """The record of a ``daskcal.save(ds, ..., resume=True)``: what each variable is (the name of its
    Dask graph, which Dask derives from its inputs and parameters; a token of an in-memory one's
    values), a token of the attributes, and daskcal's version."""
    from dask.base import tokenize

    from daskcal import __version__

    what = {}
    for name, var in ds.variables.items():
        data = var.data
        graph = data.name if hasattr(data, "dask") and hasattr(data, "name") else f"values {tokenize(data)}"
        what[f"{name} (its graph)"] = graph
    for name, value in json.loads(json.dumps(ds.attrs, default=str)).items():
        text = json.dumps(value)  # long values (a WCS as ASDF text) by a token
        what[f"attrs[{name!r}]"] = value if len(text) <= 200 else f"token {tokenize(text)}"
    return {"command": "save", "input": None, "input_fingerprint": None, "parameters": dict(sorted(what.items())),
            "chunks": None, "daskcal": __version__}


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


def partial_record(final: str | os.PathLike, name: str | None = None) -> dict | None:
    """The record of the run whose partial product of ``final`` waits to be resumed
    (in :func:`daskcal.io._outputs.resume_folder`, of ``name``), or None if there is none to resume."""
    from daskcal.io._outputs import RUN_FILE, resume_folder

    run = resume_folder(final, name) / RUN_FILE
    try:
        return json.loads(run.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        msg = f"{run} cannot be read ({type(exc).__name__}: {exc}); run without --resume to start over"
        raise ValueError(msg) from exc


def check_partial(final: str | os.PathLike, record: dict, name: str | None = None) -> bool:
    """Whether a partial product of ``final`` waits to be resumed by this run (``record``): True if one
    was begun by a run recorded alike, False if there is none.

    Raises
    ------
    ValueError
        One was begun by a run that differs from this one (the message names the first difference).
    """
    from daskcal.io._outputs import resume_folder

    recorded = partial_record(final, name)
    if recorded is None:
        return False
    difference = _difference(recorded, record)
    if difference is not None:
        what = f"the partial {Path(final).name}" if name is None else "the partial products"
        if name is not None:
            difference = difference.replace("was made", "were made", 1)
        msg = (f"{what} in {resume_folder(final, name)} {difference}; run without --resume to start over (that "
               f"removes {'it' if name is None else 'them'})")
        raise ValueError(msg)
    return True


def _difference(recorded: dict, wanted: dict) -> str | None:
    """The first difference between the record a product carries and this run's, as the end of a
    sentence whose subject is the product; None if they are equal."""
    if recorded == wanted:
        return None
    if recorded.get("command") != wanted["command"]:
        if "save" in (recorded.get("command"), wanted["command"]):
            made = {"save": "daskcal.save"}.get(recorded.get("command"), f"'daskcal {recorded.get('command')}'")
            return f"was made by {made}, not this {'daskcal.save' if wanted['command'] == 'save' else 'command'}"
        return f"was made by 'daskcal {recorded.get('command')}', not 'daskcal {wanted['command']}'"
    if recorded.get("input") != wanted["input"]:
        return f"was made from {recorded.get('input')}; this run reads {wanted['input']}"
    then, now = recorded.get("input_fingerprint") or {}, wanted["input_fingerprint"] or {}
    if then != now:
        changed = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
        if isinstance(wanted["input"], list):
            return f"was made from its inputs as they were then ({', '.join(changed)} changed since)"
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
