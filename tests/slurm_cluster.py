"""A real one-node SLURM cluster on this machine, for tests: Debian's munge and slurm-wlm
daemons (munged, slurmctld, slurmd) with their key, config, state, spool and logs in a temp
folder and ports of their own, so nothing of the machine's is touched.

    cluster = SlurmCluster.start(folder)   # or a reason it cannot start: SlurmUnavailable
    subprocess.run(["sbatch", ...], env=cluster.env)
    cluster.stop()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol")


class SlurmUnavailable(Exception):
    """Why the daemons cannot start here (the test is skipped with this reason)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 5) -> str:
    return " | ".join(path.read_text().splitlines()[-lines:]) if path.exists() else "(no log)"


@dataclass
class SlurmCluster:
    folder: Path
    node: str
    env: dict[str, str]  # SLURM_CONF: what sbatch, squeue and scontrol need to find it

    @classmethod
    def start(cls, folder: Path) -> SlurmCluster:
        missing = [name for name in DAEMONS if shutil.which(name, path=_sbin_path()) is None]
        if missing:
            raise SlurmUnavailable(
                f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge; "
                "make test does it when run as root)"
            )
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd must run as root to start jobs as their user")
        node = socket.gethostname().split(".")[0]
        for name in ("state", "spool", "munge"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / "munge").chmod(0o700)
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = folder / "munge" / "munge.socket"
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        conf = folder / "slurm.conf"
        conf.write_text(
            f"""ClusterName=s5cltest
SlurmctldHost={node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder / "slurmd.log"}
NodeName={node} CPUs={os.cpu_count()} RealMemory={int(memory_mb * 0.9)} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        # Snakemake's jobstep executor drops SLURM_* variables, SLURM_CONF too, before the
        # srun inside each job; srun then looks for /etc/slurm/slurm.conf, where a real
        # cluster keeps it. An srun first on PATH puts this cluster's back instead.
        shims = folder / "bin"
        shims.mkdir(exist_ok=True)
        (shims / "srun").write_text(
            f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n'
        )
        (shims / "srun").chmod(0o755)
        path = f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"
        cluster = cls(folder, node, {**os.environ, "SLURM_CONF": str(conf), "PATH": path})
        env = {**cluster.env, "PATH": _sbin_path()}  # the daemons are in /usr/sbin
        subprocess.run(
            ["munged", "--force", f"--key-file={key}", f"--socket={socket_path}",
             f"--pid-file={folder / 'munge' / 'munged.pid'}",
             f"--log-file={folder / 'munge' / 'munged.log'}",
             f"--seed-file={folder / 'munge' / 'munged.seed'}"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        for daemon in ("slurmctld", "slurmd"):
            started = subprocess.run([daemon, "-f", str(conf)], env=env, capture_output=True)
            if started.returncode != 0:
                cluster.stop()
                raise SlurmUnavailable(f"{daemon} did not start: {started.stderr.strip()}")
        cluster.wait_until_idle()
        return cluster

    def wait_until_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run(["sinfo", "--noheader", "--format=%T"], check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        self.stop()
        raise SlurmUnavailable(
            f"the node did not become idle in {timeout:.0f} s (sinfo: {state!r}); "
            f"slurmctld: {_tail(self.folder / 'slurmctld.log')}; "
            f"slurmd: {_tail(self.folder / 'slurmd.log')}"
        )

    def run(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key=value pairs (finished jobs stay for MinJobAge, 300 s)."""
        shown = self.run(["scontrol", "show", "job", "--oneliner", job_id]).stdout
        return dict(item.split("=", 1) for item in shown.split() if "=" in item)

    def stop(self) -> None:
        self.run(["scontrol", "shutdown"], check=False)
        for pid_file in (self.folder / "slurmctld.pid", self.folder / "slurmd.pid"):
            _wait_for_exit(pid_file)
        _wait_for_exit(self.folder / "munge" / "munged.pid", kill=True)


def _sbin_path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def _wait_for_exit(pid_file: Path, kill: bool = False, timeout: float = 20) -> None:
    """Wait for the daemon in `pid_file` to end (after SIGTERM if `kill`), SIGKILL it if not."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    signals = [15] if kill else []
    deadline = time.monotonic() + timeout
    try:
        for number in signals:
            os.kill(pid, number)
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
