"""A throwaway one-node SLURM cluster on this machine, for the SLURM profile.

Started by the ``slurm`` fixture of ``tests/test_slurm.py`` (once per session) and by
people with ``make slurm-up`` / ``make slurm-down`` (this file run as a script)::

    python tests/slurm_cluster.py up DIR      # start; prints SLURM_CONF and PATH to export
    python tests/slurm_cluster.py status DIR  # sinfo and squeue --states=all
    python tests/slurm_cluster.py down DIR    # stop what `up` started

Needs Debian's ``slurm-wlm`` and ``munge`` (``make slurm-tools``) and root: slurmd
runs the jobs, and Debian's daemons expect root. Everything lives below DIR:

- ``slurm.conf`` for this host: its real CPUs and memory (``slurmd -C``), two
  partitions named like the profile's (``cpu``, ``gpu``; the gpu one has no GRES,
  so a job that asks for a GPU is refused), ``proctrack/linuxproc`` and
  ``task/none`` (no cgroups), SlurmctldPort/SlurmdPort on free localhost ports;
- ``munge/munge.key`` (a fresh key) and a private ``munged`` whose socket lies in
  ``/tmp/medseg-munge-*`` (munged wants every folder above its socket open to all,
  which pytest's temporary folders are not); nothing in /etc is read or changed;
- ``bin/srun``: the srun that jobs must find first on PATH (see ``srun_shim``);
- ``state/``, ``spool/``, ``log/`` (slurmctld.log, slurmd.log, jobcomp.txt) and
  ``pids.json``: munged, slurmctld and slurmd run in the foreground (``-F``/``-D``),
  each in its own session, and are stopped by these PIDs, each one checked first to
  still be that daemon on this DIR.

Accounting: none (``accounting_storage/none``, no slurmdbd, no database), so
``sacct`` answers "Slurm accounting storage is disabled". What stands in for it:
``MinJobAge=3600`` keeps every finished job in slurmctld for an hour, so
``squeue --states=all`` reports its final state (the SLURM executor plugin's
``status_command: squeue``), and ``jobcomp/filetxt`` writes one line per finished
job (id, name, state, partition, exit code) to ``log/jobcomp.txt``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from services import alive, free_ports, log_tails, terminate

#: The partitions of pipelines/profiles/slurm (the gpu one without GPUs here).
PARTITIONS = ("cpu", "gpu")
#: The daemons, in start order (stopped in reverse).
DAEMONS = ("munged", "slurmctld", "slurmd")
#: The client commands the tests and the executor plugin call.
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
_SBIN = ("/usr/sbin", "/sbin")


class ClusterError(RuntimeError):
    """The test cluster could not be started (the message says why and what to do)."""


def tool(name: str) -> str | None:
    """Absolute path of a SLURM/munge program (PATH, then /usr/sbin and /sbin)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *_SBIN]))


def unavailable() -> str | None:
    """Why no test cluster can run here, or None if it can be tried."""
    if not sys.platform.startswith("linux"):
        return f"the SLURM test cluster runs on Linux only, not {sys.platform}"
    missing = [name for name in (*DAEMONS, "munge", *CLIENTS) if tool(name) is None]
    if missing:
        return (
            f"SLURM/munge not installed (missing: {', '.join(missing)}): "
            "run `make slurm-tools` (Debian's slurm-wlm and munge)"
        )
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmd runs the jobs): run as root"
    return None


@dataclass(frozen=True)
class Cluster:
    """A running test cluster: its folder, node and the PIDs of its daemons."""

    root: Path
    node: str
    pids: dict[str, int]

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        """One line per finished job (jobcomp/filetxt)."""
        return self.root / "log" / "jobcomp.txt"

    @property
    def bin(self) -> Path:
        """Put first on PATH: the srun that finds this cluster inside a job (srun_shim)."""
        return self.root / "bin"

    def env(self) -> dict[str, str]:
        """The environment for SLURM commands (and Snakemake) against this cluster."""
        path = os.pathsep.join([str(self.bin), os.environ.get("PATH", "")])
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster, output captured as text."""
        result = subprocess.run(
            [tool(args[0]) or args[0], *args[1:]],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result


def node_definition() -> tuple[str, str]:
    """This host as ``slurmd -C`` describes it: (node name, NodeName=... line)."""
    out = subprocess.run(
        [tool("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("NodeName=")), None)
    if out.returncode != 0 or line is None:
        raise ClusterError(f"slurmd -C did not describe this host: {out.stderr.strip()}")
    return line.split()[0].split("=", 1)[1], line


def slurm_conf(root: Path, node_line: str, ports: list[int], munge_socket: Path) -> str:
    """slurm.conf text: this host as the only node, both partitions on it."""
    node = node_line.split()[0].split("=", 1)[1]
    log = root / "log"
    partitions = "\n".join(
        f"PartitionName={name} Nodes={node} MaxTime=INFINITE State=UP"
        + (" Default=YES" if i == 0 else "")
        for i, name in enumerate(PARTITIONS)
    )
    return f"""\
# medseg's SLURM test cluster (tests/slurm_cluster.py): one node, this host
ClusterName=medsegtest
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={log / "slurmctld.log"}
SlurmdLogFile={log / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# no accounting database: finished jobs stay visible to squeue/scontrol for an hour,
# and every finished job gets a line in jobcomp.txt
MinJobAge=3600
JobCompType=jobcomp/filetxt
JobCompLoc={log / "jobcomp.txt"}
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
{partitions}
"""


def srun_shim(conf: Path) -> str:
    """An ``srun`` that names this cluster's slurm.conf: Snakemake's slurm-jobstep
    executor (0.6.1) runs each rule in the job as ``srun ... snakemake ...`` with every
    SLURM_* variable but the job's identity removed, SLURM_CONF too, so the real srun
    would look for /etc/slurm/slurm.conf. A cluster whose slurm.conf lies at the
    default place needs no such thing."""
    return (
        "#!/bin/sh\n"
        "# medseg's SLURM test cluster (tests/slurm_cluster.py): see srun_shim there\n"
        f'SLURM_CONF={shlex.quote(str(conf))} exec {shlex.quote(tool("srun"))} "$@"\n'
    )


def _alive(pid: int, root: Path) -> bool:
    """pid is still a process started for this cluster (its command line names root)."""
    return alive(pid, f"{root}/")


def _spawn(name: str, args: list[str], root: Path) -> subprocess.Popen:
    with open(root / "log" / f"{name}.out", "ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `make slurm-up`, not hit by a Ctrl-C
            env={**os.environ, "SLURM_CONF": str(root / "slurm.conf")},
        )
    return proc


def _log_tail(root: Path, lines: int = 15) -> str:
    names = ("slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log", "munged.out")
    return log_tails((root / "log" / name for name in names), lines)


def _wait_until(what: str, ready, root: Path, procs: dict, timeout: float) -> None:
    """Poll ready() until true; fail at once if a daemon started so far has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited at start\n{_log_tail(root)}")
        if ready():
            return
        time.sleep(0.5)
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s\n{_log_tail(root)}")


def _prepare(root: Path) -> dict:
    """Folders, munge key, slurm.conf and bin/srun in root; the record (pids.json)."""
    node, node_line = node_definition()
    for sub in ("munge", "state", "spool", "log", "run", "bin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.unlink(missing_ok=True)
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    socket_dir = Path(tempfile.mkdtemp(prefix="medseg-munge-"))
    socket_dir.chmod(0o755)
    record = {"root": str(root), "socket_dir": str(socket_dir), "node": node, "pids": {}}
    (root / "pids.json").write_text(json.dumps(record, indent=1))
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, node_line, free_ports(2), socket_dir / "munge.socket"))
    (root / "bin" / "srun").write_text(srun_shim(conf))
    (root / "bin" / "srun").chmod(0o755)
    return record


def _launch(root: Path, record: dict, procs: dict, timeout: float) -> None:
    """Start the three daemons in order, each once the previous one answers; procs gets
    their Popen objects (a PID alone cannot tell a daemon still starting from one gone)."""
    pids: dict[str, int] = record["pids"]
    conf, munge_socket = root / "slurm.conf", Path(record["socket_dir"]) / "munge.socket"
    cluster = Cluster(root, record["node"], pids)

    def spawn(name: str, args: list[str]) -> None:
        procs[name] = _spawn(name, [tool(name), *args], root)
        pids[name] = procs[name].pid
        (root / "pids.json").write_text(json.dumps(record, indent=1))

    def pinged() -> bool:
        return cluster.run("scontrol", "ping", check=False).returncode == 0

    def idle() -> bool:
        state = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()
        return bool(state) and all(s == "idle" for s in state)

    spawn(
        "munged",
        [
            "-F",
            f"--socket={munge_socket}",
            f"--key-file={root / 'munge' / 'munge.key'}",
            f"--log-file={root / 'log' / 'munged.log'}",
            f"--pid-file={root / 'run' / 'munged.pid'}",
            f"--seed-file={root / 'munge' / 'munged.seed'}",
            "--num-threads=2",
        ],
    )
    _wait_until("munged", munge_socket.exists, root, procs, timeout)
    spawn("slurmctld", ["-D", "-f", str(conf)])
    _wait_until("slurmctld", pinged, root, procs, timeout)
    spawn("slurmd", ["-D", "-N", record["node"], "-f", str(conf)])
    _wait_until("the node", idle, root, procs, timeout)


def start(root: Path, timeout: float = 60) -> Cluster:
    """Start munged, slurmctld and slurmd for a cluster in ``root`` (created; an earlier
    cluster there must be stopped) and wait until the node is idle."""
    reason = unavailable()
    if reason:
        raise ClusterError(reason)
    root = Path(root).resolve()
    if (root / "pids.json").exists():
        raise ClusterError(f"a test cluster is recorded in {root}: stop it first (down)")
    record = _prepare(root)
    procs: dict[str, subprocess.Popen] = {}
    try:
        _launch(root, record, procs, timeout)
    except BaseException:
        for proc in reversed(procs.values()):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stop(root)
        raise
    return Cluster(root, record["node"], record["pids"])


def stop(root: Path, timeout: float = 20) -> list[str]:
    """Stop the cluster recorded in ``root``: cancel its jobs, then SIGTERM each daemon
    by its recorded PID (SIGKILL after ``timeout`` s). Returns what was stopped."""
    root = Path(root).resolve()
    record_path = root / "pids.json"
    if not record_path.exists():
        return []
    record = json.loads(record_path.read_text())
    pids: dict[str, int] = record["pids"]
    if pids.get("slurmctld") and _alive(pids["slurmctld"], root):
        jobs = Cluster(root, record["node"], pids).run(
            "squeue", "-h", "-t", "PD,R,CG", "-o", "%i", check=False
        )
        ids = jobs.stdout.split()
        if ids:
            Cluster(root, record["node"], pids).run("scancel", *ids, check=False)
            time.sleep(2)
    stopped = []
    for name in reversed(DAEMONS):
        pid = pids.get(name)
        if pid and terminate(pid, f"{root}/", timeout):
            stopped.append(f"{name} ({pid})")
    shutil.rmtree(record["socket_dir"], ignore_errors=True)
    record_path.unlink()
    return stopped


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("dir", type=Path, help="the cluster's folder (created by up)")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    if args.action == "up":
        try:
            cluster = start(root)
        except ClusterError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"SLURM test cluster up in {root} (node {cluster.node}, {cluster.pids})")
        print(cluster.run("sinfo").stdout, end="")
        print(f"use it with:  export SLURM_CONF={cluster.conf} PATH={cluster.bin}:$PATH")
        print(
            "  snakemake --profile pipelines/profiles/slurm "
            "--profile pipelines/profiles/slurm-test --configfile CONFIG"
        )
        print(f"stop it with: make slurm-down (python {sys.argv[0]} down {root})")
    elif args.action == "down":
        stopped = stop(root)
        print(f"stopped {', '.join(stopped)}" if stopped else f"no test cluster in {root}")
    else:
        if not (root / "pids.json").exists():
            print(f"no test cluster in {root}")
            return 1
        record = json.loads((root / "pids.json").read_text())
        cluster = Cluster(root, record["node"], record["pids"])
        print(cluster.run("sinfo").stdout + cluster.run("squeue", "--states=all").stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
