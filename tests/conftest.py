"""Fixtures shared by the test folders: every graph is tested on Dask's synchronous, threaded and
distributed schedulers (``scheduler``)."""

import contextlib
import os

import dask
import pytest

# the commands the tests run never go to a developer's running ``daskcal serve`` (tests/cli/test_serve.py starts its own)
os.environ["DASKCAL_SERVER"] = "0"

SCHEDULERS = ["sync", "threads", "distributed"]


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, set_as_default=False) as c:  # used only where a test asks
        yield c


@pytest.fixture(params=SCHEDULERS)
def scheduler(request):
    """A context in which ``compute()`` (and ``daskcal.save``) use the scheduler under test."""
    name = request.param
    if name != "distributed":
        return lambda: dask.config.set(scheduler=name)
    client = request.getfixturevalue("client")

    @contextlib.contextmanager
    def on_client():  # the client as dask's scheduler and as distributed's current client
        with dask.config.set(scheduler=client), client.as_current():
            yield

    return on_client
