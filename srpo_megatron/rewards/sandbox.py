"""The process sandbox that runs untrusted (model-written) Python programs against stdin inputs.

Isolation layers, outermost first; `Sandbox.layers` says which are active on this host:
- `process`: the program never runs in the caller's process; the parent survives anything it does.
- `net_namespace`, `pid_namespace`, `mount_namespace` (util-linux `unshare`): no network but a down
  loopback; the runner is PID 1 (its children cannot signal it, and its exit kills every process
  left). Without root, a user namespace per sandbox provides them.
- `private_root`: deny-by-default filesystem. The runner pivots into an empty tmpfs that holds only
  the interpreter's directories and the system libraries (read-only), /proc, a few /dev nodes and
  the scratch directory (as /tmp, /var/tmp, /dev/shm, /run/lock, the cwd and HOME). The repository,
  the data and its answers, checkpoints, the run directory and every home do not exist inside.
- `uid_drop`, `nproc_limit`: as root, every running sandbox gets its own uid from a range (leased
  across processes), so RLIMIT_NPROC (which does not bind root) counts that sandbox only and a fork
  bomb cannot starve its neighbours. Without root, each sandbox's own user namespace has its own
  process count (Linux >= 5.14), with the same effect. Both work on a Slurm node; a pids cgroup
  would need a delegated cgroup v2 tree, which batch jobs rarely get.
- `rlimits`: CPU time and file size per run; address space, open files, no core dumps per program.
- `audit_hook`: a `sys.addaudithook` hook refuses every `socket.*` event, with or without namespaces.
- `clean_env`, `scratch_dir`: none of the caller's environment; a private cwd, deleted afterwards.
- `wall_clock`, `output_cap`: deadlines per run (inside) and per program (outside) kill whole process
  groups; output beyond the cap is not read, the producer is killed.
Without namespaces a program could read the answers and reach localhost, so that mode is refused
unless `SandboxConfig.allow_without_namespaces` is set (trusted code only).

Protocol: the parent writes a job (marshal) into the scratch directory and starts this file as a
script, `python -I -S sandbox_runner.py JOB`, inside the namespaces. The runner sets up as root, drops
privileges, compiles the program once, then forks one child per input (fresh state each time, a real
fd 0 so `open(0).read()` works) and streams one frame per run on its stdout. Expected outputs never
enter the sandbox, so a program cannot print what it was supposed to compute. A runner that dies
for reasons outside the program is started again on the remaining inputs (`infra_retries`); when
it keeps dying the report says `crashed`, an infrastructure failure, not a score. Needs Linux >= 5.3.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import marshal
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from srpo_megatron.rewards import sandbox_runner
from srpo_megatron.rewards.sandbox_runner import FRAME, STATUSES, STDERR_TAIL

_RUN_SLACK_S = 0.5  # per-run allowance on top of the run timeout for fork, frame and reaping
_LEASE_DIR = "/run/srpo-sandbox-uids"  # root-owned: one lock file per uid in use, shared by all processes
_SYSTEM_LIBRARIES = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")
_LOADER_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation options for one program run in the sandbox."""

    timeout_s: float = 2.0
    """Wall-clock limit per run (one stdin input); CPU time is limited to the same, rounded up."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) of the program."""
    max_processes: int = 256
    """RLIMIT_NPROC of each sandbox (threads count). It counts that sandbox's processes only: as
    root each sandbox has its own uid, without root its own user namespace."""
    max_file_mb: int = 16
    """Largest file a run may write (RLIMIT_FSIZE)."""
    max_output_bytes: int = 4 << 20
    """Stdout read per run; a program printing more is killed and the run fails."""
    stack_mb: int = 256
    """Stack limit (recursive solutions), set with util-linux `prlimit` when it is installed."""
    uids: tuple[int, int] | None = (2_000_000_000, 1024)
    """As root: (first uid, how many). Every running sandbox leases its own uid from this range, so
    process limits and clean-up reach that sandbox only. Pick ids no account or container uses;
    None keeps root (not recommended)."""
    use_namespaces: bool = True
    """Use network/PID/mount namespaces (util-linux `unshare`); without them see the next field."""
    allow_without_namespaces: bool = False
    """Run even when namespaces are off or this host refuses them. Programs can then read every file
    their uid can (the data and its answers), reach localhost and, without root, outlive the run:
    for trusted code only, e.g. checking reference solutions."""
    private_dirs: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
    """Where the scratch directory appears inside; the first one is the program's cwd and HOME."""
    scratch_mb: int = 64
    """Size of the scratch directory inside the namespaces (a tmpfs, so in memory): what a program
    may write in all, beyond which writes fail with ENOSPC instead of filling the host's disk."""
    exposed_paths: tuple[str, ...] = ()
    """Host paths visible read-only inside, beyond the interpreter's directories and the system
    libraries (nothing else exists there); e.g. a directory of allowed extra modules."""
    scratch_root: str | None = None
    """Parent of the per-program scratch directories (default: the system temp dir)."""
    python: str = sys.executable
    """Interpreter that runs the programs (started with -I -S: stdlib only, no site-packages)."""
    startup_timeout_s: float = 10.0
    """Allowance for starting the runner, added to the per-program deadline."""
    infra_retries: int = 2
    """Restarts of a runner that died for reasons outside the program (fork or exec failures,
    a killed runner), each on the inputs not yet reported; after them the program is `crashed`."""

    def __post_init__(self) -> None:
        for name in ("timeout_s", "startup_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0 seconds (got {getattr(self, name)})")
        sizes = ("memory_mb", "max_processes", "max_file_mb", "max_output_bytes", "stack_mb", "scratch_mb")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"SandboxConfig.{name} must be >= 1 (got {getattr(self, name)})")
        if self.infra_retries < 0:
            raise ValueError(f"SandboxConfig.infra_retries must be >= 0 (got {self.infra_retries})")
        if self.uids is not None:
            first, count = self.uids
            if first < 1 or count < 1 or first + count > 2**31 - 1:
                raise ValueError(
                    f"SandboxConfig.uids=(first, count) must be unprivileged uids below 2**31 - 1 "
                    f"(got {self.uids}); e.g. (2000000000, 1024)"
                )
        if not self.private_dirs or not all(os.path.isabs(path) for path in self.private_dirs):
            raise ValueError(
                "SandboxConfig.private_dirs must be absolute paths, at least one (the program's cwd); "
                f"got {self.private_dirs}"
            )
        for path in self.exposed_paths:
            if not os.path.isabs(path):
                raise ValueError(f"SandboxConfig.exposed_paths: {path!r} must be an absolute path")


@dataclass(frozen=True)
class RunOutcome:
    """One run of the program on one input. `status` is one of `STATUSES`; `exit_code` < 0 is a signal."""

    status: str
    exit_code: int
    stdout: bytes
    stderr: str


@dataclass(frozen=True)
class SandboxReport:
    """What happened to a program: `runs` holds one outcome per input that ran, in input order.

    status: "completed" (every input ran), "stopped" (the caller's `stop` ended it), "compile_error",
    "timeout" (the whole-program deadline), or "crashed" (the runner kept dying for reasons outside
    the program, `infra_retries` + 1 times; see `detail`).
    """

    status: str
    runs: tuple[RunOutcome, ...]
    detail: str = ""

    @property
    def infrastructure_failure(self) -> bool:
        """The program could not be judged: score it as unscored, not as wrong."""
        return self.status == "crashed"


class SandboxError(RuntimeError):
    """The sandbox could not be set up on this host: an infrastructure failure, not the program's."""


class Sandbox:
    """Runs untrusted Python programs under every isolation layer this host supports; thread-safe."""

    def __init__(self, config: SandboxConfig = SandboxConfig()) -> None:
        self.config = config
        # Root that can become the range's uids; "root" of a container's user namespace (enroot,
        # podman) often maps only itself and takes the user-namespace route instead.
        as_root = os.geteuid() == 0 and (config.uids is None or _uids_mapped(*config.uids))
        self._unshare, missing = (
            _namespace_support(as_root) if config.use_namespaces else ((), "use_namespaces is False")
        )
        if not self._unshare and not config.allow_without_namespaces:
            raise SandboxError(
                f"the sandbox cannot isolate programs on this host ({missing}): a program could read the "
                "data and its answers and reach localhost. Install util-linux `unshare` and allow "
                "namespaces (user namespaces without root), or set "
                "SandboxConfig.allow_without_namespaces=true for trusted code only"
            )
        self._uids = _UidLeases(*config.uids) if as_root and config.uids is not None else None
        self._prlimit = shutil.which("prlimit")
        if self._uids is not None and not self._unshare:
            _check_interpreter_reachable(config.python)
        self._expose, self._links = _filesystem_view(config) if self._unshare else ((), ())
        layers = {"process", "rlimits", "audit_hook", "clean_env", "scratch_dir", "wall_clock", "output_cap"}
        if self._unshare:
            layers |= {"net_namespace", "pid_namespace", "mount_namespace", "private_root", "nproc_limit"}
        if self._uids is not None:
            layers |= {"uid_drop", "nproc_limit"}
        self.layers = frozenset(layers)

    def run(
        self,
        source: str,
        inputs: Sequence[bytes | str],
        stop: Callable[[int, RunOutcome], bool] | None = None,
    ) -> SandboxReport:
        """Run `source` once per input, in order; `stop(index, outcome)` returning True ends early.

        A runner that dies is restarted on the inputs it did not report (runs are independent
        forks, so the outcomes so far stand)."""
        data = [x.encode() if isinstance(x, str) else bytes(x) for x in inputs]
        runs: list[RunOutcome] = []
        for attempt in range(1, self.config.infra_retries + 2):
            report = self._attempt(source, data[len(runs) :], len(runs), stop)
            runs += report.runs
            if report.status != "crashed":
                return SandboxReport(report.status, tuple(runs), report.detail)
        return SandboxReport("crashed", tuple(runs), f"{report.detail} ({attempt} attempts)")

    def _attempt(self, source: str, data: list[bytes], offset: int, stop) -> SandboxReport:
        cfg = self.config
        with self._lease() as uid:
            scratch = tempfile.mkdtemp(prefix="srpo-sandbox-", dir=cfg.scratch_root)
            try:
                work = os.path.join(scratch, "root" if self._unshare else "work")
                os.mkdir(work)  # the private root's mount point, or the cwd without namespaces
                if uid is not None and not self._unshare:
                    os.chown(work, uid, uid)
                job_path = os.path.join(scratch, ".job")
                with open(job_path, "wb") as f:
                    marshal.dump(self._job(source, data, scratch, uid), f)
                try:
                    proc = subprocess.Popen(
                        self._command(job_path),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        cwd=scratch,
                        env=self._env(work),
                        start_new_session=True,  # one process group: a single kill reaches the whole tree
                    )
                except OSError as exc:  # fork/exec of the runner failed: the host's, not the program's
                    return SandboxReport("crashed", (), f"could not start the runner: {exc}")
                try:
                    return self._collect(proc, len(data), offset, stop)
                finally:
                    _kill_group(proc)
                    if uid is not None and not self._unshare:
                        self._kill_uid(uid)  # setsid() escapees of a killed runner
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    @contextlib.contextmanager
    def _lease(self) -> Iterator[int | None]:
        if self._uids is None:
            yield None
        else:
            with self._uids.lease() as uid:
                yield uid

    def _job(self, source: str, data: list[bytes], scratch: str, uid: int | None) -> dict:
        cfg = self.config
        private_root = bool(self._unshare)
        return {
            "source": source,
            "inputs": data,
            "root": os.path.join(scratch, "root") if private_root else None,
            "workdir": cfg.private_dirs[0] if private_root else os.path.join(scratch, "work"),
            "scratch_bytes": cfg.scratch_mb << 20,
            "expose": list(self._expose),
            "links": [list(link) for link in self._links],
            "private_dirs": list(cfg.private_dirs),
            "uid": uid,
            # Only where the count is this sandbox's alone: its own uid or its own user namespace.
            "nproc": cfg.max_processes if uid is not None or private_root else 0,
            "sole_user": uid is not None or private_root,
            "memory": cfg.memory_mb << 20,
            "fsize": cfg.max_file_mb << 20,
            "cpu": max(1, int(-(-cfg.timeout_s // 1))),
            "timeout": cfg.timeout_s,
            "max_output": cfg.max_output_bytes,
        }

    def _command(self, job_path: str) -> list[str]:
        stack = [self._prlimit, f"--stack={self.config.stack_mb << 20}"] if self._prlimit else []
        return [
            *self._unshare,
            *stack,
            self.config.python,
            "-I",
            "-S",
            "-B",
            os.path.abspath(sandbox_runner.__file__),
            job_path,
        ]

    def _env(self, work: str) -> dict[str, str]:
        home = self.config.private_dirs[0] if self._unshare else work
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}

    def _kill_uid(self, uid: int) -> None:
        """Kill every process of `uid` (kill(-1) as that uid) before the uid is leased again."""
        subprocess.run(["kill", "-9", "-1"], user=uid, group=uid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                       capture_output=True, timeout=30, check=False)

    def _collect(self, proc: subprocess.Popen, n_runs: int, offset: int, stop) -> SandboxReport:
        """Read frames as they arrive until every run reported, the deadline passed, or `stop` said so.
        Run indices seen by `stop` start at `offset` (the runs an earlier attempt reported)."""
        cfg = self.config
        deadline = time.monotonic() + cfg.startup_timeout_s + n_runs * (cfg.timeout_s + _RUN_SLACK_S)
        frames = _FrameReader()
        diagnostics = bytearray()
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            selector.register(proc.stderr, selectors.EVENT_READ)
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return SandboxReport("timeout", tuple(frames.runs), "the program exceeded its deadline")
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is proc.stderr:
                        diagnostics = (diagnostics + chunk)[-STDERR_TAIL:]
                    else:
                        for index, outcome in frames.feed(chunk):
                            if index < 0:
                                return _program_failure(outcome)
                            if stop is not None and stop(offset + index, outcome):
                                return SandboxReport("stopped", tuple(frames.runs))
        if len(frames.runs) == n_runs:
            return SandboxReport("completed", tuple(frames.runs))
        detail = f"runner exited with {proc.wait()}: {diagnostics.decode(errors='replace').strip()}"
        return SandboxReport("crashed", tuple(frames.runs), detail)


class _UidLeases:
    """Hands every running sandbox its own uid from [first, first + count).

    A uid is held by a non-blocking flock on its file in a root-owned directory, so the sandboxes
    of every process on the host (one trainer rank each) never share one. The start rotates, so a
    uid just released (whose processes may still be dying) is the last to be handed out again.
    """

    def __init__(self, first: int, count: int) -> None:
        self._first, self._count = first, count
        os.makedirs(_LEASE_DIR, mode=0o700, exist_ok=True)
        info = os.lstat(_LEASE_DIR)
        if info.st_uid != 0 or info.st_mode & 0o077 or not os.path.isdir(_LEASE_DIR):
            raise SandboxError(f"{_LEASE_DIR} must be a directory owned by root with mode 0700; remove it")
        self._cursor = os.getpid() * 7919 % count  # processes start their searches far apart
        self._cursor_lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self) -> Iterator[int]:
        with self._cursor_lock:
            start, self._cursor = self._cursor, (self._cursor + 1) % self._count
        for step in range(self._count):
            uid = self._first + (start + step) % self._count
            fd = os.open(os.path.join(_LEASE_DIR, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)  # releases the lease
            return
        raise SandboxError(
            f"all {self._count} sandbox uids from {self._first} are in use on this host; raise "
            "SandboxConfig.uids' count or run fewer sandboxes at once"
        )


class _FrameReader:
    """Incremental decoder of the runner's frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.runs: list[RunOutcome] = []

    def feed(self, chunk: bytes) -> list[tuple[int, RunOutcome]]:
        self._buffer += chunk
        decoded = []
        while len(self._buffer) >= FRAME.size:
            index, status, exit_code, n_out, n_err = FRAME.unpack_from(self._buffer)
            end = FRAME.size + n_out + n_err
            if len(self._buffer) < end:
                break
            out = bytes(self._buffer[FRAME.size : FRAME.size + n_out])
            err = self._buffer[FRAME.size + n_out : end].decode(errors="replace")
            del self._buffer[:end]
            outcome = RunOutcome(STATUSES[status], exit_code, out, err)
            if index >= 0:
                self.runs.append(outcome)
            decoded.append((index, outcome))
        return decoded


def _program_failure(outcome: RunOutcome) -> SandboxReport:
    if outcome.status == "setup_error":
        raise SandboxError(f"sandbox set-up failed on this host: {outcome.stderr}")
    return SandboxReport("compile_error", (), outcome.stderr.strip())


def _kill_group(proc: subprocess.Popen) -> None:
    # Also after the runner exited: without a PID namespace its leftovers share its group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # unshare --kill-child takes the namespace down with it
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _uids_mapped(first: int, count: int) -> bool:
    """Whether [first, first + count) are uids of this process's user namespace."""
    with open("/proc/self/uid_map") as f:
        ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
    return any(inside <= first and first + count <= inside + length for inside, _, length in ranges)


@functools.cache
def _namespace_support(as_root: bool) -> tuple[tuple[str, ...], str]:
    """The `unshare` prefix that works on this host and "", or () and why none does.

    Probed once per process and memoised: a fact about the host, and the probe costs a process start.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return (), "util-linux `unshare` is not installed"
    flags = ["--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if not as_root:
        flags = ["--user", "--map-root-user", *flags]
    probe = subprocess.run([unshare, *flags, "true"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        return (), f"`unshare {' '.join(flags)}` failed: {probe.stderr.strip()[-300:]}"
    return (unshare, *flags), ""


def _filesystem_view(config: SandboxConfig) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """What exists inside the private root: read-only directories/files, and symlinks (merged /usr)."""
    links, paths = [], [*_interpreter_dirs(config.python), *config.exposed_paths]
    for path in (*_SYSTEM_LIBRARIES, *_LOADER_FILES):
        if os.path.islink(path) and path in _SYSTEM_LIBRARIES:
            links.append((path, os.readlink(path)))
        elif os.path.exists(path):
            paths.append(path)
    unique = sorted({os.path.normpath(p) for p in paths if os.path.exists(p)})
    nested = {p for p in unique for q in unique if p != q and p.startswith(q.rstrip("/") + "/")}
    return tuple(p for p in unique if p not in nested), tuple(links)


@functools.cache
def _interpreter_dirs(python: str) -> tuple[str, ...]:
    """The directories `python` reads at run time: its standard library, extension modules and
    libpython. Asked of the interpreter itself (once per process), so any layout works."""
    code = (
        "import json, sysconfig\n"
        "print(json.dumps([sysconfig.get_path(k) for k in ('stdlib', 'platstdlib')]"
        " + [sysconfig.get_config_var('LIBDIR') or '']))"
    )
    probe = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        raise SandboxError(f"SandboxConfig.python {python!r} does not start: {probe.stderr.strip()[-300:]}")
    return tuple(p for p in json.loads(probe.stdout) if p)


def _check_interpreter_reachable(python: str) -> None:
    """Without a mount namespace, the dropped uid must be able to import the standard library itself."""
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        return  # another interpreter: its layout is unknown here, the first run will tell
    path = sys.base_prefix
    while path not in ("/", ""):
        if not os.stat(path).st_mode & 0o001:
            raise SandboxError(
                f"Python lives under {path}, which the sandbox user cannot enter, and this host has no "
                "usable `unshare` to work around it: install util-linux, point SandboxConfig.python "
                "at a world-readable interpreter, or set SandboxConfig.uids=None"
            )
        path = os.path.dirname(path)
