"""A real single-node Slurm cluster for the tests: munged, slurmctld and slurmd, all started here.

Everything lives under one temporary directory: the munge key and socket, ``slurm.conf``
(found by every Slurm command through ``SLURM_CONF``), state, spool, pid and log files. Ports
are free ones picked at start. Nothing under /etc, /run or /var is touched, the daemons run
in the foreground as our children, and ``stop`` cancels the cluster's jobs, then ends exactly
the daemons it started, by their pids: the machine is left as it was found.

Needs Debian's ``slurm-wlm`` and ``munge`` packages (``.ci/run`` installs them) and root (slurmd
runs jobs as their user; the tests submit as themselves).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
# the daemons live in sbin, which a non-login PATH may lack
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing() -> str | None:
    """Why the cluster cannot start here (None: it can)."""
    absent = [b for b in BINARIES if shutil.which(b, path=SEARCH_PATH) is None]
    if absent:
        return f"Slurm binaries not found ({', '.join(absent)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the test Slurm cluster's slurmd must run as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.conf = os.path.join(self.root, "etc", "slurm.conf")
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": self.conf}
        self.host = socket.gethostname()

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 60) -> "SlurmCluster":
        for d in ("etc", "munge", "state", "spool", "log", "run"):
            os.makedirs(self.path(d), exist_ok=True)
        os.chmod(self.path("munge"), 0o700)
        key = self.path("munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = self.path("munge", "munge.socket")
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={sock}",
                f"--pid-file={self.path('munge', 'munged.pid')}",
                f"--log-file={self.path('log', 'munged.log')}",
                f"--seed-file={self.path('munge', 'munged.seed')}",
            ],
        )
        self._wait(lambda: os.path.exists(sock), "munged's socket", timeout)
        with open(self.path("etc", "plugstack.conf"), "w"):
            pass
        cpus = os.cpu_count() or 1
        conf = f"""\
ClusterName=ablatetest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.path("state")}
SlurmdSpoolDir={self.path("spool")}
SlurmctldPidFile={self.path("run", "slurmctld.pid")}
SlurmdPidFile={self.path("run", "slurmd.pid")}
SlurmctldLogFile={self.path("log", "slurmctld.log")}
SlurmdLogFile={self.path("log", "slurmd.log")}
PlugStackConfig={self.path("etc", "plugstack.conf")}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=10
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.conf, "w") as f:
            f.write(conf)
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", self.conf])
        self._wait(
            lambda: self.run("sinfo", "-h", check=False).returncode == 0, "slurmctld", timeout
        )
        self._spawn("slurmd", ["slurmd", "-D", "-f", self.conf])
        self._wait(
            lambda: self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle",
            "the node to be idle",
            timeout,
        )
        return self

    def _spawn(self, name: str, cmd: list[str]) -> None:
        cmd = [shutil.which(cmd[0], path=SEARCH_PATH), *cmd[1:]]
        out = open(self.path("log", f"{name}.stdout"), "w")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, stdin=subprocess.DEVNULL
        )

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited ({p.returncode}) while waiting for {what}:\n{self.logs()}"
                    )
            if ready():
                return
            time.sleep(0.25)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    # ------------------------------------------------------------------ use

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def jobs(self) -> list[dict]:
        """Every job the controller knows (finished ones too, for MinJobAge)."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i|%T|%j|%r").stdout
        return [
            dict(zip(("id", "state", "name", "reason"), line.split("|", 3)))
            for line in out.splitlines()
            if line
        ]

    def job_info(self, job_id: str) -> dict:
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)

    def logs(self) -> str:
        text = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            p = self.path("log", name)
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    text.append(f"--- {name}\n" + "".join(f.readlines()[-30:]))
        return "\n".join(text)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout: float = 30) -> None:
        """Cancel the cluster's jobs, then end the daemons started here (by pid), newest first."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            ids = [
                j["id"]
                for j in self.jobs()
                if j["state"]
                in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "SUSPENDED")
            ]
            if ids:
                self.run("scancel", *ids, check=False)
                deadline = time.time() + timeout
                while time.time() < deadline and any(
                    j["state"] in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")
                    for j in self.jobs()
                ):
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; Slurm commands (and ``ablate sweep``) find it via
    SLURM_CONF."""
    why = missing()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(str(tmp_path_factory.mktemp("slurm")))
    before = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = cluster.conf
        yield cluster
    finally:
        cluster.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
