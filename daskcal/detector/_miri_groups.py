"""MIRI's leading and trailing DO_NOT_USE groups in the ramp fit (stcal 1.20 ``discard_miri_groups``).

jwst's firstframe and lastframe steps flag the first and last groups of MIRI ramps DO_NOT_USE in
every pixel. For MIRI data (``ramps.attrs["instrument"] == "MIRI"``) with more than one group,
stcal's OLS ramp fit then drops, before fitting, every leading group plane that is DO_NOT_USE in
every pixel of every integration (clearing JUMP_DET on the group that becomes the first), then
the last plane if it is DO_NOT_USE everywhere; one-good-group suppression has already been
applied to the whole ramps. What changes: the dropped groups' flags no longer reach the products'
DQ, the segments' group indices (the optional product's ``yint``) and the pedestal count from the
new first group. Fewer than 2 groups left is an error. The jump step has no such rule (its
DO_NOT_USE groups are simply not used), so only the ramp fit is affected.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from daskcal.dq import DQ

__all__ = ["all_dnu_planes", "fitted_groups", "is_miri", "trim_block"]

_DNU = int(DQ.DO_NOT_USE)
_JUMP = int(DQ.JUMP_DET)
_NOT_PERSISTENCE = 0xFF & ~int(DQ.PERSISTENCE)


def is_miri(attrs) -> bool:
    """Whether the ramps' ``instrument`` attribute names MIRI."""
    return str(attrs.get("instrument", "")).strip().upper() == "MIRI"


def all_dnu_planes(gdq: da.Array) -> np.ndarray:
    """(ngroups,) bool: group planes DO_NOT_USE in every pixel of every integration.

    The first chunk usually settles it (a plane with a usable pixel there is usable); only
    otherwise is the whole group DQ reduced.
    """
    first = np.asarray(gdq.blocks[:, :, 0, 0].compute())
    if not ((first & _DNU) != 0).all(axis=(0, 2, 3)).any():
        return np.zeros(gdq.shape[1], dtype=bool)
    (planes,) = dask.compute(((gdq & _DNU) != 0).all(axis=(0, 2, 3)))
    return np.asarray(planes)


def fitted_groups(all_dnu: np.ndarray) -> tuple[int, int]:
    """``(first, stop)``: the groups stcal fits for MIRI, from :func:`all_dnu_planes`.

    Raises
    ------
    ValueError
        When fewer than 2 groups are left.
    """
    ngroups = len(all_dnu)
    first = 0
    while first < ngroups and all_dnu[first]:
        first += 1
    stop = ngroups
    if first < stop and all_dnu[stop - 1]:
        stop -= 1
    if stop - first < 2:
        msg = (f"MIRI ramps need at least 2 groups that are not DO_NOT_USE everywhere after the leading and "
               f"trailing ones; {stop - first} of {ngroups} left")
        raise ValueError(msg)
    return first, stop


def trim_block(data: np.ndarray, gdq: np.ndarray, groups: tuple[int, int], suppress: bool):
    """One chunk's ``(data, gdq)`` cut to ``groups`` as stcal fits them (block layer).

    With ``suppress``, ramps with exactly one good group (apart from PERSISTENCE) in the whole
    ramp get DO_NOT_USE on every group first; JUMP_DET is cleared on the new first group.
    Returns new arrays (the input is not modified).
    """
    first, stop = groups
    q = np.array(gdq, dtype=np.uint8)
    if suppress:
        one = ((q & _NOT_PERSISTENCE) == 0).sum(axis=1) == 1
        q |= np.where(one, np.uint8(_DNU), np.uint8(0))[:, None]
    q = np.ascontiguousarray(q[:, first:stop])
    if first > 0:
        q[:, 0] &= np.uint8(~_JUMP & 0xFF)
    return np.ascontiguousarray(data[:, first:stop]), q
