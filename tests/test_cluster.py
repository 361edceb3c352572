"""The embedded cluster: workers get daskcal's allocator settings."""

import os

import pytest

from daskcal.cluster import WORKER_ENVIRON, connect


def _environ():
    return {k: os.environ.get(k) for k in WORKER_ENVIRON}


def test_embedded_workers_get_the_allocator_settings():
    with connect("local", n_workers=1, dashboard_address=None) as client:
        got = client.run(_environ)
    assert list(got.values()) == [{k: str(v) for k, v in WORKER_ENVIRON.items()}]


def test_unknown_cluster_is_a_clear_error():
    with pytest.raises(ValueError, match="cluster must be"), connect("nonsense"):
        pass


def test_jobqueue_config_gives_batch_workers_the_same_settings():
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "jobqueue.yaml").read_text())
    assert config["distributed"]["nanny"]["pre-spawn-environ"] == WORKER_ENVIRON
