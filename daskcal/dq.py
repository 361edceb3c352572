"""Data-quality bit flags with JWST's bit values.

One :class:`enum.IntFlag` serves every step. Names and values follow the JWST
``dqflags`` table (``stdatamodels.jwst.datamodels.dqflags``), so products written
by daskcal can be read by JWST tools and ``good_bits`` mnemonics such as
``"JUMP_DET,DROPOUT"`` mean the same thing here as there.
"""

from __future__ import annotations

import enum

__all__ = ["DQ", "dq_dict"]


class DQ(enum.IntFlag):
    """JWST data-quality bits (pixel and group DQ)."""

    GOOD = 0
    DO_NOT_USE = 2**0
    SATURATED = 2**1
    JUMP_DET = 2**2
    DROPOUT = 2**3
    OUTLIER = 2**4
    PERSISTENCE = 2**5
    AD_FLOOR = 2**6
    CHARGELOSS = 2**7
    UNRELIABLE_ERROR = 2**8
    NON_SCIENCE = 2**9
    DEAD = 2**10
    HOT = 2**11
    WARM = 2**12
    LOW_QE = 2**13
    RC = 2**14
    TELEGRAPH = 2**15
    NONLINEAR = 2**16
    BAD_REF_PIXEL = 2**17
    NO_FLAT_FIELD = 2**18
    NO_GAIN_VALUE = 2**19
    NO_LIN_CORR = 2**20
    NO_SAT_CHECK = 2**21
    UNRELIABLE_BIAS = 2**22
    UNRELIABLE_DARK = 2**23
    UNRELIABLE_SLOPE = 2**24
    UNRELIABLE_FLAT = 2**25
    OPEN = 2**26
    ADJ_OPEN = 2**27
    FLUX_ESTIMATED = 2**28
    MSA_FAILED_OPEN = 2**29
    OTHER_BAD_PIXEL = 2**30
    REFERENCE_PIXEL = 2**31


def dq_dict() -> dict[str, int]:
    """Return ``{name: value}`` for every flag, the mapping stcal calls ``dqflags``."""
    return {name: int(flag.value) for name, flag in DQ.__members__.items()}
