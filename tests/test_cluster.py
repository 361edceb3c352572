"""daskcal.connect: the embedded cluster (allocator settings, 127.0.0.1 only, TLS), existing
schedulers (address, scheduler file, TLS options) and the command line's one-line errors."""

import json
import os
import socket
import sys
import time
from pathlib import Path

import dask
import psutil
import pytest
from distributed import Client
from distributed.security import Security

from daskcal.cli import main
from daskcal.cli._main import build_parser
from daskcal.cli._common import connect_options
from daskcal.cluster import WORKER_ENVIRON, SchedulerConnectError, connect


ROOT = Path(__file__).resolve().parents[1]


def _environ():
    return {k: os.environ.get(k) for k in WORKER_ENVIRON}


def _process_environ():
    """The environment this process started with (what glibc's allocator read), not ``os.environ``."""
    with open("/proc/self/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    environ = {k.decode(): v.decode() for k, v in pairs}
    return {k: environ.get(k) for k in WORKER_ENVIRON}


def _listening():
    """{port: ip} of the TCP sockets this process listens on."""
    return {c.laddr.port: c.laddr.ip for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def _port(address):
    return int(address.rsplit(":", 1)[1].split("/")[0])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def embedded():
    """One embedded cluster (one worker) shared by the tests that connect to it."""
    with connect("local", n_workers=1) as client:
        yield client


def test_embedded_workers_get_the_allocator_settings(embedded):
    want = {k: str(v) for k, v in WORKER_ENVIRON.items()}
    assert list(embedded.run(_environ).values()) == [want]
    if sys.platform.startswith("linux"):  # and they had them when they started, when glibc read them
        assert list(embedded.run(_process_environ).values()) == [want]


def test_embedded_workers_are_forked_from_the_preloaded_fork_server(embedded):
    """The workers start with distributed, dask.array, zarr, numba... imported (by the fork server)."""
    from multiprocessing import forkserver

    server = forkserver._forkserver._forkserver_pid
    # numba.np.arraymath: numba's compiler was set up (its registries are loaded at the first compile)
    got = embedded.run(lambda: (os.getppid(), "dask.array" in sys.modules, "numba" in sys.modules,
                                "numba.np.arraymath" in sys.modules))
    assert list(got.values()) == [(server, True, True, True)]


def _heartbeat_records_kept() -> list[bool]:
    """Whether this process's ``distributed.worker`` logger lets through the heartbeat error of a closing
    connection pool, of a refused connection and another message with the closing error."""
    import logging

    from distributed.comm.core import CommClosedError

    logger = logging.getLogger("distributed.worker")
    kept = []
    for message, error in [("Failed to communicate with scheduler during heartbeat.", CommClosedError("ConnectionPool closing.")),
                           ("Failed to communicate with scheduler during heartbeat.", ConnectionRefusedError("refused")),
                           ("Something else.", CommClosedError("ConnectionPool closing."))]:
        try:
            raise error
        except OSError:
            record = logger.makeRecord(logger.name, logging.ERROR, "worker.py", 1, message, (), sys.exc_info())
        kept.append(bool(logger.filter(record)))
    return kept


def test_embedded_workers_drop_only_the_closing_heartbeat_error(embedded):
    """A heartbeat in flight when a worker closes its connection pool logged an error with a traceback on
    the command's stderr (CI saw it once, after a README example). The workers drop that record only."""
    assert list(embedded.run(_heartbeat_records_kept).values()) == [[False, True, True]]


def test_connect_preloads_both_stages_task_modules(tmp_path):
    """From Python (no command to name a stage), connect()'s workers start with the detector's and the image
    stage's task modules imported, asdf's extensions loaded (not in each worker's first WCS-reading task)."""
    import subprocess

    script = tmp_path / "session.py"
    script.write_text(
        "import sys\n"
        "import daskcal\n"
        "if __name__ == '__main__':\n"
        "    with daskcal.connect('local', n_workers=1, dashboard_address=None) as client:\n"
        "        names = ('daskcal.detector._fused', 'daskcal.image._resample', 'asdf_astropy.extensions')\n"
        "        print(list(client.run(lambda: [n in sys.modules for n in names]).values()))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "[[True, True, True]]"


def test_worker_preload_module_imports_both_stages():
    """``dask worker --preload daskcal.preload`` gives a worker the embedded workers' modules."""
    import subprocess

    names = ["daskcal.detector._fused", "daskcal.image._resample", "asdf_astropy.extensions", "numba.np.arraymath",
             "daskcal._worker_logs"]
    code = f"import sys\nimport daskcal.preload\nprint([n in sys.modules for n in {names!r}])"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[True,", "True,", "True,", "True,", "True]"]


def _http_status(url: str) -> int:
    from urllib.error import HTTPError
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=30) as response:
            return response.status
    except HTTPError as exc:
        return exc.code


def test_an_embedded_cluster_serves_dashboards_only_when_given_an_address():
    """Without a dashboard address neither the scheduler nor the workers serve one (the command line's
    default: bokeh costs about a second to import), and the scheduler's HTTP server (health, metrics) takes
    a free port, not 8787 that another run may hold. With one, both do."""
    for address, want in ((None, 404), (":0", 200)):
        with connect("local", n_workers=1, tls=False, dashboard_address=address) as client:
            port = client.scheduler_info()["services"]["dashboard"]  # the scheduler's HTTP server
            link = f"http://127.0.0.1:{port}/status"
            if address is None:
                assert port != 8787 and client.dashboard_link == ""  # no link to a page that is not there
            else:
                assert client.dashboard_link == link
            assert _http_status(link) == want, (address, link)
            ports = client.run(lambda dask_worker: dask_worker.http_server.port)
            for port in ports.values():
                assert _http_status(f"http://127.0.0.1:{port}/status") == want, (address, port)


def test_a_fork_server_with_other_settings_is_not_used(monkeypatch):
    """A fork server whose environment is not the workers' (not started by daskcal, or before the settings
    changed) would give workers without the allocator settings: the workers are spawned instead."""
    import daskcal.cluster

    connect("local", n_workers=1, tls=False, dashboard_address=None).close()  # the fork server runs
    pid, _ = daskcal.cluster._forkserver
    monkeypatch.setattr(daskcal.cluster, "_forkserver", (pid, {"MALLOC_ARENA_MAX": "8"}))
    with connect("local", n_workers=1, tls=False, dashboard_address=None) as client:
        got = client.run(lambda: (os.getppid(), _environ(), _process_environ()))
    want = {k: str(v) for k, v in WORKER_ENVIRON.items()}
    assert list(got.values()) == [(os.getpid(), want, want)]


def test_embedded_cluster_listens_on_localhost_only(embedded):
    scheduler = embedded.scheduler.address
    dashboard = embedded.dashboard_link
    assert scheduler.startswith("tls://127.0.0.1:")
    assert dashboard.startswith("http://127.0.0.1:")
    here = _listening()  # the scheduler and its dashboard run in this process
    assert here[_port(scheduler)] == "127.0.0.1"
    assert here[_port(dashboard.removeprefix("http://"))] == "127.0.0.1"
    for worker, ips in embedded.run(lambda: sorted(set(_listening().values()))).items():
        assert worker.startswith("tls://127.0.0.1:")
        assert ips == ["127.0.0.1"], worker


def test_embedded_scheduler_queues_one_task_per_worker_thread(embedded):
    """Worker saturation 1.0 (Dask's default 1.1 rounds up to two tasks for a one-thread worker, which then starts
    the next long task before the short ones that follow the last reach it): see daskcal.cluster._embedded."""
    from daskcal.cluster import WORKER_SATURATION

    assert WORKER_SATURATION == 1.0
    assert embedded.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION) == 1.0


def test_a_client_without_the_cluster_certificate_is_refused(embedded):
    address = embedded.scheduler.address
    attempts = {
        "plain tcp": dict(address=address.replace("tls://", "tcp://")),
        "another self-signed certificate": dict(address=address, security=Security.temporary()),
    }
    for label, kwargs in attempts.items():
        t0 = time.perf_counter()
        with pytest.raises(OSError):
            Client(**kwargs, timeout=5)
        assert time.perf_counter() - t0 < 10, label
    with pytest.raises(ValueError, match="uses TLS: give its CA certificate"), connect(address, timeout=5):
        pass
    with Client(address, security=embedded.security, timeout=5) as other:  # the holder of the certificate can
        assert other.submit(sum, [1, 2]).result() == 3


def test_tls_options_and_scheduler_file_reach_an_existing_scheduler(embedded, tmp_path):
    sec = embedded.security  # the embedded cluster's temporary credentials, written out as PEM files
    for name, pem in {"ca.pem": sec.tls_ca_file, "cert.pem": sec.tls_client_cert, "key.pem": sec.tls_client_key}.items():
        (tmp_path / name).write_text(pem)
    # what dask scheduler --scheduler-file writes (Scheduler.identity(); Client.write_scheduler_file fails on
    # this distributed version's scheduler_info)
    identity = {"type": "Scheduler", "id": "Scheduler-test", "address": embedded.scheduler.address,
                "services": {"dashboard": _port(embedded.dashboard_link.removeprefix("http://"))}, "workers": {}}
    (tmp_path / "scheduler.json").write_text(json.dumps(identity))
    argv = ["demo", "--cluster", str(tmp_path / "scheduler.json"), "--connect-timeout", "5",
            "--tls-ca-file", str(tmp_path / "ca.pem"), "--tls-cert", str(tmp_path / "cert.pem"),
            "--tls-key", str(tmp_path / "key.pem")]
    args = build_parser().parse_args(argv)
    options = connect_options(args)
    assert options["timeout"] == 5 and options["dashboard_address"] is None  # the command line's default: none
    with connect(args.cluster, **options) as client:
        assert client.scheduler.address == embedded.scheduler.address
        assert client.submit(sum, [2, 3]).result() == 5


def test_tls_option_naming_a_missing_file_is_a_clear_error(tmp_path):
    args = build_parser().parse_args(["demo", "--tls-ca-file", str(tmp_path / "nope.pem")])
    with pytest.raises(FileNotFoundError, match="--tls-ca-file: no file at"):
        connect_options(args)


def test_tls_settings_for_a_plain_tcp_address_are_a_clear_error():
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(ValueError, match=f"address {address} is not tls://"), \
            connect(address, security=Security.temporary(), timeout=1):
        pass


def test_bad_scheduler_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no scheduler file at"), connect(str(tmp_path / "scheduler.json")):
        pass
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "Scheduler"}))
    with pytest.raises(ValueError, match="has no 'address'"), connect(str(bad)):
        pass
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON object"), connect(str(bad)):
        pass


def test_embedded_cluster_refuses_tls_settings():
    with pytest.raises(ValueError, match="for an existing scheduler"), connect("local", security=Security()):
        pass


def test_unknown_cluster_is_a_clear_error():
    with pytest.raises(ValueError, match="cluster must be"), connect("nonsense"):
        pass


def _demo_argv(tmp_path, *extra):
    return ["demo", "--shape", "1", "3", "16", "16", "--chunks", "16", "16", "--out", str(tmp_path / "out"),
            "--no-progress", *extra]


def _one_error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("daskcal demo: error: "), lines
    return lines[0]


def test_unreachable_scheduler_is_one_line_after_the_timeout(tmp_path, capsys):
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    assert main(_demo_argv(tmp_path, "--cluster", address, "--connect-timeout", "1")) == 2
    assert time.perf_counter() - t0 < 15
    line = _one_error_line(capsys)
    assert f"cannot connect to a Dask scheduler at {address} (connect timeout 1 s)" in line
    with pytest.raises(SchedulerConnectError, match="connect timeout 0.5 s"), connect(address, timeout=0.5):
        pass


def test_jobqueue_cluster_without_dask_jobqueue_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import dask_jobqueue now fails
    assert main(_demo_argv(tmp_path, "--cluster", "slurm")) == 2
    assert "cluster='slurm' needs dask-jobqueue: pip install 'daskcal[jobqueue]'" in _one_error_line(capsys)


def test_jobqueue_that_fails_to_import_is_not_called_missing(monkeypatch):
    """dask-jobqueue installed but failing in its own import (as when another thread was importing
    distributed: tests/test_precompile.py) is raised as that error, not as a package to install."""
    import importlib.abc

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "dask_jobqueue":
                msg = "cannot import name 'Server' from partially initialized module 'distributed.core'"
                raise ImportError(msg, name="distributed.core", path="core.py")

    monkeypatch.delitem(sys.modules, "dask_jobqueue", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(ImportError, match="partially initialized") as info, connect("slurm"):
        pass
    assert "needs dask-jobqueue" not in str(info.value)


def test_jobqueue_config_gives_batch_workers_the_same_settings():
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "jobqueue.yaml").read_text())
    assert config["distributed"]["nanny"]["pre-spawn-environ"] == WORKER_ENVIRON


def test_embedded_cluster_without_tls_when_asked(capsys):
    from daskcal.cli._common import connect_options
    from daskcal.cli._main import build_parser

    args = build_parser().parse_args(["resample", "x.zarr", "-o", "o.zarr", "--no-tls"])
    assert connect_options(args)["tls"] is False
    with connect("local", n_workers=1, tls=False, dashboard_address=None) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert client.submit(sum, [1, 2]).result() == 3


def test_a_worker_slow_to_exit_after_a_successful_run_is_not_reported():
    """distributed's nanny kills a worker process still alive 4 s after it was asked to stop (a loaded
    machine) and warns; after a successful run that is noise. A worker whose process waits 5 s for a
    thread before exiting shows it."""
    import logging
    import threading
    import time

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    nanny, ours = Collect(), Collect()
    logging.getLogger("distributed.nanny").addHandler(nanny)
    logging.getLogger("daskcal.cluster").addHandler(ours)
    level = logging.getLogger("daskcal.cluster").level
    logging.getLogger("daskcal.cluster").setLevel(logging.DEBUG)
    try:
        with connect("local", n_workers=1, tls=False, dashboard_address=None) as client:
            client.run(lambda: threading.Thread(target=time.sleep, args=(5,)).start())
    finally:
        logging.getLogger("distributed.nanny").removeHandler(nanny)
        logging.getLogger("daskcal.cluster").removeHandler(ours)
        logging.getLogger("daskcal.cluster").setLevel(level)
    assert [m for m in ours.messages if "still alive" in m]  # it happened (said at debug level)
    assert not [m for m in nanny.messages if "still alive" in m]
    assert not logging.getLogger("distributed.nanny").filters  # quiet only during that shutdown


def test_connect_without_with_closes_the_cluster_with_the_client():
    """A notebook's ``client = daskcal.connect()``: closing the client stops the embedded cluster's workers."""
    client = connect("local", n_workers=1, dashboard_address=None)
    try:
        pids = list(client.run(os.getpid).values())
        assert client.submit(sum, [1, 2, 3]).result() == 6
        cluster = client.cluster
        assert cluster is not None and cluster.status.name == "running"
    finally:
        client.close()
    assert cluster.status.name == "closed"
    deadline = time.monotonic() + 20
    while any(psutil.pid_exists(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    client.close()  # closing again is harmless


def test_connect_with_block_enters_once_and_closes():
    with connect("local", n_workers=1, dashboard_address=None) as client:
        cluster = client.cluster
        assert client.submit(sum, [1]).result() == 1
    assert cluster.status.name == "closed"
    assert client.status == "closed"


@pytest.mark.parametrize(("kw", "match"), [
    ({"adapt": (1, 2)}, "adapt .* is for cluster='slurm' or 'pbs'"),
    ({"wait_workers": 0}, "wait_workers must be a positive number"),
    ({"n_workers": 0}, "n_workers must be a positive integer"),
])
def test_bad_connect_options_before_anything_starts(kw, match):
    with pytest.raises(ValueError, match=match):
        connect("local", **kw)


@pytest.mark.parametrize(("adapt", "match"), [((0, 2), "1 <= minimum <= maximum"), ((3, 2), "1 <= minimum"),
                                              (("a", 2), "two integers")])
def test_bad_adapt_range(adapt, match):
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(ValueError, match=match):
        connect("slurm", adapt=adapt)


def test_jobqueue_without_cores_or_memory_in_the_configuration_names_where_to_set_them(monkeypatch):
    pytest.importorskip("dask_jobqueue")
    import dask

    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}), \
            pytest.raises(ValueError, match=r"no jobqueue.slurm.cores or memory; copy deploy/jobqueue.yaml"):
        connect("slurm")


_SCRIPT = """import daskcal
{body}
"""


@pytest.mark.parametrize(("body", "ok"), [
    ("client = daskcal.connect('local', n_workers=1, dashboard_address=None)\nprint(client.submit(sum, [1, 2]).result())\n"
     "client.close()", False),
    ("def main():\n    with daskcal.connect('local', n_workers=1, dashboard_address=None) as c:\n"
     "        print(c.submit(sum, [1, 2]).result())\nif __name__ == '__main__':\n    main()", True),
    ("if '__main__' == __name__:\n    c = daskcal.connect('local', n_workers=1, dashboard_address=None)\n"
     "    print(c.submit(sum, [1, 2]).result())\n    c.close()", True),
])
def test_a_script_without_the_main_guard_gets_one_clear_error(tmp_path, body, ok):
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT.format(body=body))
    import subprocess

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    if ok:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "3"
    else:
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1] == (
            f"RuntimeError: daskcal.connect() starts worker processes, which run the top level of {script} again: "
            "call it under 'if __name__ == \"__main__\":' (line 2 is not)")
        assert "Nanny failed" not in done.stderr


def test_threads_cluster_runs_in_this_process_on_localhost_only():
    """connect("threads"): one worker of n_workers x threads_per_worker threads in this process (no worker process
    is started), scheduler on in-process comms, its and the worker's HTTP servers on 127.0.0.1 only, the dashboard
    link where it listens; the same result as the threaded scheduler."""
    import dask
    import dask.array as da
    import numpy as np

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    x = da.random.default_rng(3).standard_normal((300, 200), chunks=(70, 60))
    want = (x @ x.T).sum(axis=0).compute(scheduler="threads")
    with connect("threads", n_workers=2, threads_per_worker=2) as client:
        assert client.scheduler.address.startswith("inproc://")
        assert list(client.nthreads().values()) == [4]
        assert {p.pid for p in psutil.Process().children(recursive=True)} == before
        dashboard = client.dashboard_link
        assert dashboard.startswith("http://127.0.0.1:")
        assert set(_listening().values()) == {"127.0.0.1"}
        assert _port(dashboard.removeprefix("http://")) in _listening()
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION) == 1.0
        np.testing.assert_array_equal(dask.compute((x @ x.T).sum(axis=0))[0], want)
    with connect("threads", dashboard_address=None) as client:
        assert client.dashboard_link == ""
        assert set(_listening().values()) == {"127.0.0.1"}
        (worker,) = client.scheduler_info()["workers"].values()
        from dask.system import CPU_COUNT

        assert worker["nthreads"] == CPU_COUNT  # one per core Dask counts, as "local" has one worker per core


def test_threads_cluster_refuses_tls_settings():
    with pytest.raises(ValueError, match="for an existing scheduler"), connect("threads", security=Security()):
        pass


def test_workers_get_the_allocator_settings_after_a_plain_distributed_cluster(monkeypatch):
    """distributed's nannies copy their settings into os.environ (MALLOC_TRIM_THRESHOLD_ 65536), where a later
    nanny takes them over its configuration: the embedded cluster's workers still get daskcal's, whether forked
    from daskcal's fork server or spawned, and os.environ is left as it was."""
    import distributed

    for k in WORKER_ENVIRON:  # restored when the test ends (distributed's copy would stay in os.environ)
        monkeypatch.delenv(k, raising=False)
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None):
        pass
    leaked = {k: os.environ.get(k) for k in WORKER_ENVIRON}
    assert leaked["MALLOC_TRIM_THRESHOLD_"] == "65536"  # what this test is about (distributed's default)
    want = {k: str(v) for k, v in WORKER_ENVIRON.items()}
    for method in ("forkserver", "spawn"):
        with dask.config.set({"distributed.worker.multiprocessing-method": method}), \
                connect("local", n_workers=1, tls=False, dashboard_address=None) as client:
            got = client.run(lambda: (_environ(), _process_environ() if sys.platform.startswith("linux") else want))
        assert list(got.values()) == [(want, want)], method
        assert {k: os.environ.get(k) for k in WORKER_ENVIRON} == leaked
