"""Start and stop a real 2-node Slurm cluster on this one machine, for the launcher tests.

Two slurmd daemons (`slurmd -N n1`, `slurmd -N n2`) listen on 127.0.0.1:17001-17002 (the next
free ports when those are taken) and a slurmctld schedules onto them, so `sbatch -N2` / `srun -N2`
behave as on a real multi-node cluster. Everything (munge key and socket, slurm.conf, state, spool,
logs, pids) lives in one directory, so the cluster does not touch /etc and several can coexist.
Needs root and tools/slurm/install.sh.

    python tools/slurm/cluster.py start DIR     # prints the SLURM_CONF to export
    python tools/slurm/cluster.py stop DIR

Clients find the cluster through the environment variable SLURM_CONF=DIR/slurm.conf.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

NODES = ("n1", "n2")
SLURMD_PORT = 17001  # n1; n2 listens on the next port
SLURMCTLD_PORT = 16817
PARTITION = "debug"
_SBIN = "/usr/sbin"


@dataclass(frozen=True)
class Cluster:
    """A started cluster: its directory and the environment variable clients need."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point Slurm clients (sbatch, squeue, scontrol) at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    @property
    def jobcomp(self) -> Path:
        """Slurm's job-completion log: one line per finished job, with its JobState and ExitCode."""
        return self.root / "jobcomp.txt"


def slurm_installed() -> bool:
    """True when the daemons and the client commands are on this machine."""
    return all(Path(_SBIN, d).exists() for d in ("slurmctld", "slurmd", "munged")) and all(
        _which(c) for c in ("sbatch", "srun", "sinfo", "scontrol")
    )


def _which(cmd: str) -> bool:
    return subprocess.run(["which", cmd], capture_output=True).returncode == 0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports() -> tuple[int, int]:
    """(slurmctld port, first slurmd port): the defaults, or the next free ones when another
    cluster (say, a second test session) holds them."""
    for offset in range(0, 400, 10):
        ctld, slurmd = SLURMCTLD_PORT + offset, SLURMD_PORT + offset
        if all(_port_free(p) for p in (ctld, *range(slurmd, slurmd + len(NODES)))):
            return ctld, slurmd
    raise RuntimeError(f"local Slurm: no free ports near {SLURMCTLD_PORT} and {SLURMD_PORT}")


def _slurm_conf(root: Path, cpus: int, ctld_port: int, slurmd_port: int) -> str:
    """slurm.conf for two nodes on 127.0.0.1; %n keeps each slurmd's spool, log and pid apart.

    cred_expire (also the delay before a requeued job may start; 120 s by default) and the
    scheduler interval are short so that a requeue test takes seconds, not minutes."""
    host = socket.gethostname().split(".")[0]
    nodes = f"n[1-{len(NODES)}]"
    ports = f"{slurmd_port}-{slurmd_port + len(NODES) - 1}"
    return f"""\
ClusterName=srpolocal
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MinJobAge=600
KillWait=10
InactiveLimit=0
SlurmdTimeout=60
NodeName={nodes} NodeAddr=127.0.0.1 NodeHostname={host} Port={ports} CPUs={cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={nodes} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _prepare(root: Path) -> None:
    """Directories, a fresh munge key (mode 0600, as munged insists) and slurm.conf."""
    for sub in ("munge", "state", "run", "log", *(f"spool/{n}" for n in NODES)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged refuses keys and sockets in group/world-writable directories.
    for d in (root, root / "munge"):
        os.chmod(d, 0o700)
    key = root / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
    (root / "slurm.conf").write_text(_slurm_conf(root, os.cpu_count() or 1, *_pick_ports()))


def _spawn(cmd: list[str], log: Path) -> int:
    """Start a daemon in the foreground of its own session, so stop() can signal it by pid."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return proc.pid


def _pids_file(root: Path) -> Path:
    return root / "run" / "daemons.json"


def _alive(pid: int, name: str) -> bool:
    """True when pid is running and is still the daemon we started (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return name in cmdline


def _wait_for(predicate, timeout: float, what: str, root: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((root / "log").glob("*.log")))
    raise RuntimeError(f"local Slurm: timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def _nodes_idle(cluster: Cluster) -> bool:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=os.environ | cluster.env
    )
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    return out.returncode == 0 and all(states.get(n) == "idle" for n in NODES)


def start(root: str | Path, timeout: float = 60.0) -> Cluster:
    """Start munged, slurmctld and one slurmd per node in `root`; return when sinfo shows all idle."""
    if os.geteuid() != 0:
        raise PermissionError("tools/slurm/cluster.py start must run as root (Slurm daemons run as root)")
    if not slurm_installed():
        raise FileNotFoundError("Slurm is not installed: run `bash tools/slurm/install.sh` as root")
    cluster = Cluster(Path(root).resolve())
    if _running(cluster.root):
        raise RuntimeError(f"a local Slurm is already running in {cluster.root}: stop it first")
    _prepare(cluster.root)
    munge, conf, logs = cluster.root / "munge", str(cluster.conf), cluster.root / "log"
    daemons = {
        "munged": _spawn(
            [
                f"{_SBIN}/munged",
                "--foreground",
                "--force",
                f"--key-file={munge}/munge.key",
                f"--socket={munge}/munge.socket",
                f"--pid-file={munge}/munged.pid",
                f"--seed-file={munge}/munged.seed",
                f"--log-file={logs}/munged.log",
            ],
            logs / "munged.out",
        )
    }
    _pids_file(cluster.root).write_text(json.dumps(daemons))
    _wait_for(lambda: (munge / "munge.socket").exists(), timeout, "munged's socket", cluster.root)
    daemons["slurmctld"] = _spawn([f"{_SBIN}/slurmctld", "-D", "-f", conf], logs / "slurmctld.out")
    for node in NODES:
        daemons[f"slurmd-{node}"] = _spawn(
            [f"{_SBIN}/slurmd", "-D", "-N", node, "-f", conf], logs / f"slurmd-{node}.out"
        )
    _pids_file(cluster.root).write_text(json.dumps(daemons))
    try:
        _wait_for(lambda: _nodes_idle(cluster), timeout, f"nodes {', '.join(NODES)} to be idle", cluster.root)
    except RuntimeError:
        stop(cluster.root)
        raise
    return cluster


def _running(root: Path) -> dict[str, int]:
    """The daemons recorded in root that are still alive, by name."""
    try:
        daemons = json.loads(_pids_file(root).read_text())
    except (OSError, ValueError):
        return {}
    return {name: pid for name, pid in daemons.items() if _alive(pid, name.split("-")[0])}


def stop(root: str | Path, timeout: float = 20.0) -> None:
    """Cancel the cluster's jobs, then stop exactly the daemons start() recorded (by pid)."""
    root = Path(root).resolve()
    daemons = _running(root)
    if "slurmctld" in daemons:
        # slurmstepd outlives slurmd, so jobs are cancelled while the controller can still reach them.
        env = os.environ | Cluster(root).env
        subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], env=env, capture_output=True)
        time.sleep(1)
    # Reverse start order: node daemons, then the controller, then munge, which they all use.
    for name, pid in reversed(list(daemons.items())):
        _terminate(pid, name.split("-")[0], timeout)
    _pids_file(root).unlink(missing_ok=True)


def _terminate(pid: int, name: str, timeout: float) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid, name):
        _reap(pid)
        time.sleep(0.2)
    if _alive(pid, name):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status when the daemon is our child (the fixture starts it in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("dir", help="directory holding the cluster's config, state and logs")
    args = parser.parse_args(argv)
    if args.action == "start":
        cluster = start(args.dir)
        print(f"local Slurm is up (nodes {', '.join(NODES)}). Point clients at it with:")
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        stop(args.dir)
        print(f"local Slurm in {Path(args.dir).resolve()} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
