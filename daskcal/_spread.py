"""Python work on many small items, spread over the worker processes of a ``distributed`` cluster.

Some steps do per-exposure or per-pair work on the client, outside the graph, in code that holds the
GIL, such as spherical-geometry's footprint intersections (skymatch). With a client whose workers are
other processes, :func:`spread` runs it there in batches; without one, or with workers in this process
(``connect("threads")``, whose threads would take turns with this one), here.

It pays for small items and long work per item. Each item travels four times (pickled here, unpickled
and pickled again by the scheduler, unpickled on the worker): a corrected JWST-style gwcs (110 KB
pickled) took ~40 ms, so serialising 64 of them as ASDF on 2 workers (tweakreg) took 6.8-7.0 s against
4.9 s here, and tweakreg does it here.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["spread"]


def spread(batch: Callable[[list], list], items: Sequence, *, least: int, name: str) -> list[Any]:
    """``batch(items)``, on the workers of the default ``distributed`` client when that pays.

    Parameters
    ----------
    batch : callable
        ``batch(list of items) -> list of results``, one per item, in order; importable by the workers
        (a module-level function), as are the items.
    items : sequence
        What ``batch`` takes.
    least : int
        Fewest items sent to the workers; fewer run here, where a scheduler round trip and pickling
        would cost more than they save.
    name : str
        Key prefix of the tasks (``{name}-{uuid}``), as the dashboard shows them.

    Returns
    -------
    list
        The results, in the order of ``items``.

    The client is the one ``.compute()`` would use (a scheduler chosen with ``dask.config.set`` wins,
    as there). The items are cut into at most four batches per worker thread.
    """
    from daskcal.cluster import workers_in_process
    from daskcal.io._atomic import _default_client

    items = list(items)
    client = _default_client() if len(items) >= least else None
    if client is None or not hasattr(client, "map") or workers_in_process(client):
        return list(batch(items))
    nbatch = min(len(items), 4 * max(1, sum(client.nthreads().values())))
    cuts = [round(k * len(items) / nbatch) for k in range(nbatch + 1)]
    batches = [items[a:b] for a, b in itertools.pairwise(cuts) if b > a]
    futures = client.map(batch, batches, pure=False, key=[f"{name}-{uuid.uuid4().hex}" for _ in batches])
    out: list = []
    for part, result in zip(batches, client.gather(futures), strict=True):
        if len(result) != len(part):
            msg = f"{name}: a batch of {len(part)} items gave {len(result)} results"
            raise RuntimeError(msg)
        out.extend(result)
    return out
