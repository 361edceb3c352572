"""A real single-node SLURM on this machine, for the tests of ``--cluster slurm`` and deploy/.

Follows ../shared/deploy-slurm-local.md: Debian's ``slurmctld slurmd slurm-client munge``,
installed with apt as root when missing; ``munged`` (unless one already answers), ``slurmctld``
and ``slurmd`` started by hand (no systemd) from a configuration of our own in a temporary
folder (``SLURM_CONF``; /etc/slurm is not touched), on loopback only and on free ports, so a
SLURM already running on the machine is left alone. :meth:`LocalSlurm.stop` cancels every job
it ran and stops the daemons it started by their PIDs.

``python tests/_localslurm.py`` starts one and prints the ``SLURM_CONF`` to export, for trying
the deploy/ scripts by hand; Ctrl-C stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


class SlurmUnavailable(RuntimeError):
    """The SLURM packages are missing and cannot be installed here (the reason is the message)."""


def install() -> None:
    """Install the Debian packages if a binary is missing; :class:`SlurmUnavailable` when that cannot be done."""
    if all(shutil.which(b) or Path(f"/usr/sbin/{b}").exists() for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0:
        msg = "SLURM is not installed and installing it needs root (apt-get install " + " ".join(PACKAGES) + ")"
        raise SlurmUnavailable(msg)
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("SLURM is not installed and this machine has no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {tail[0]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class LocalSlurm:
    """One SLURM node (this machine, ``os.cpu_count()`` CPUs) in partition ``debug``, configured under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pids: list[tuple[str, Path]] = []  # (daemon, pid file) of what we started

    # -- start ------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> LocalSlurm:
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmd needs root")
        install()
        self._munge()
        host = socket.gethostname().split(".")[0]
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(f"""ClusterName=daskcaltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=30
Waittime=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mib() - 2048} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        for daemon in ("slurmctld", "slurmd"):
            pidfile = r / f"{daemon}.pid"
            subprocess.run([f"/usr/sbin/{daemon}"], env=self.env, check=True, capture_output=True, timeout=30)
            self._pids.append((daemon, pidfile))
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        log = (r / "log" / "slurmctld.log").read_text(errors="replace")[-2000:]
        self.stop()
        msg = f"the local SLURM node did not become idle in {timeout:g} s (sinfo: {state!r}); slurmctld.log:\n{log}"
        raise RuntimeError(msg)

    def _munge(self) -> None:
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True, check=False).returncode == 0:
            return  # a munged already answers: use it, and leave it running
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            Path(d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "munge:munge", "/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge",
                        "/etc/munge/munge.key"], check=True, capture_output=True)
        os.chmod("/run/munge", 0o755)
        os.chmod("/etc/munge", 0o700)
        os.chmod("/etc/munge/munge.key", 0o400)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True, capture_output=True)
        self._pids.append(("munged", Path("/run/munge/munged.pid")))
        deadline = time.monotonic() + 10
        while subprocess.run("munge -n | unmunge", shell=True, capture_output=True, check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("munged started but 'munge -n | unmunge' fails")
            time.sleep(0.2)

    # -- use --------------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 60, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a SLURM client command (``squeue``, ``sbatch``...) against this SLURM (``env``: with ``SLURM_CONF``)."""
        return subprocess.run(list(cmd), env=env or self.env, cwd=cwd, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def jobs(self) -> list[dict]:
        """Jobs in the queue: ``{"id", "name", "state", "reason"}``."""
        out = self.run("squeue", "-h", "-o", "%i|%j|%T|%r").stdout
        return [dict(zip(("id", "name", "state", "reason"), line.split("|"))) for line in out.splitlines() if line]

    def job(self, job_id: str) -> dict:
        """``scontrol show job`` as a dict (``JobState``, ``ExitCode``, ``StdOut``, ...); {} once forgotten."""
        done = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        if done.returncode:
            return {}
        return dict(kv.split("=", 1) for kv in done.stdout.split() if "=" in kv)

    def wait_job(self, job_id: str, timeout: float) -> dict:
        """Wait until ``job_id`` has ended; its last ``scontrol`` record."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") not in {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"}:
                return info
            if time.monotonic() > deadline:
                msg = f"SLURM job {job_id} still {info.get('JobState')} after {timeout:g} s"
                raise TimeoutError(msg)
            time.sleep(0.5)

    # -- stop -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, then stop what we started, by PID, newest first."""
        if self.conf.exists() and any(d != "munged" for d, _ in self._pids):
            ids = [j["id"] for j in self.jobs()] if self._answers() else []
            if ids:
                self.run("scancel", *ids, check=False)
        for daemon, pidfile in reversed(self._pids):
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        self._pids.clear()

    def _answers(self) -> bool:
        return self.run("squeue", "-h", check=False, timeout=20).returncode == 0


if __name__ == "__main__":
    import tempfile

    slurm = LocalSlurm(Path(tempfile.mkdtemp(prefix="daskcal-slurm-"))).start()
    print(f"export SLURM_CONF={slurm.conf}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        slurm.stop()
