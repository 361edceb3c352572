"""Fixtures for the image-stage resample tests: small simulated exposures and the stcal oracle."""

from __future__ import annotations

import pytest

import daskcal


@pytest.fixture(scope="session")
def sim6():
    """Six dithered 100x120 exposures, 2 px distortion, with stars."""
    return daskcal.simulate_images(n=6, shape=(100, 120), seed=1, n_stars=12)


@pytest.fixture(scope="session")
def sim6_wcs(sim6):
    return daskcal.output_wcs(sim6.images)


@pytest.fixture
def compute_graph_keys(monkeypatch) -> list[str]:
    """The keys (as strings) of every graph ``dask.compute`` is given during the test."""
    import dask
    from dask.base import unpack_collections

    keys, real = [], dask.compute

    def spy(*args, **kwargs):
        collections, _ = unpack_collections(*args)
        for c in collections:
            keys.extend(str(k) for k in dict(c.__dask_graph__()))
        return real(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", spy)
    return keys
