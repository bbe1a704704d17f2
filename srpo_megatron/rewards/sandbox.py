"""The process sandbox that runs untrusted (model-written) Python programs against stdin inputs.

Isolation layers, outermost first; `Sandbox.layers` says which are active on this host:
- `process`: the program never runs in the caller's process; the parent survives anything it does.
- `net_namespace`, `pid_namespace`, `mount_namespace` (util-linux `unshare`): no network but a down
  loopback; the runner is PID 1 (its children cannot signal it, and its exit kills every process
  left); /tmp, /var/tmp, /dev/shm and /run/lock are the scratch directory, /proc is private, and
  `hidden_paths` are covered by empty read-only mounts.
- `uid_drop`, `nproc_limit`: as root the runner drops to `nobody` (RLIMIT_NPROC does not bind root).
- `rlimits`: CPU time and file size per run; address space, open files, no core dumps per program.
- `audit_hook`: a `sys.addaudithook` hook refuses every `socket.*` event, with or without namespaces.
- `clean_env`, `scratch_dir`: none of the caller's environment; a private cwd, deleted afterwards.
- `wall_clock`, `output_cap`: deadlines per run (inside) and per program (outside) kill whole process
  groups; output beyond the cap is not read, the producer is killed.

Protocol: the parent writes a job (marshal) into the scratch directory and starts this file as a
script, `python -I -S sandbox.py JOB`, inside the namespaces. The runner sets up as root, drops
privileges, compiles the program once, then forks one child per input (fresh state each time, a real
fd 0 so `open(0).read()` works) and streams one frame per run on its stdout. Expected outputs never
enter the sandbox, so a program cannot print what it was supposed to compute. Needs Linux >= 5.3.
"""

from __future__ import annotations

import marshal
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
import types

# ---------------------------------------------------------------------------------------------------
# Runner: executes inside the sandbox as `python -I -S sandbox.py JOB` (stdlib imports only).
# ---------------------------------------------------------------------------------------------------

STATUSES = ("ok", "runtime_error", "timeout", "output_limit", "compile_error", "setup_error")
_FRAME = struct.Struct("<iiiII")  # run index (-1: whole program), status, exit code, len(out), len(err)
_STDERR_TAIL = 4096  # bytes of stderr kept per run: enough for the last traceback lines
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC = 1, 2, 4, 4096, 16384


def _runner_main(job_path: str) -> int:
    try:
        with open(job_path, "rb") as f:
            job = marshal.load(f)
        os.unlink(job_path)
        _setup(job)
    except BaseException as exc:  # noqa: BLE001 - any set-up failure is the host's, report it
        _send_frame(-1, "setup_error", 1, b"", f"{type(exc).__name__}: {exc}".encode())
        return 1
    try:
        code = compile(job["source"], "<program>", "exec")
    except Exception as exc:  # noqa: BLE001 - SyntaxError, null bytes, nesting too deep
        message = "".join(traceback.format_exception_only(type(exc), exc))
        _send_frame(-1, "compile_error", 1, b"", message.encode(errors="replace"))
        return 0
    for index, data in enumerate(job["inputs"]):
        status, exit_code, out, err = _run_one(code, data, job)
        _send_frame(index, status, exit_code, out, err)
    return 0


def _setup(job: dict) -> None:
    """Mounts and limits as root, then privileges dropped and the network audit hook installed."""
    os.umask(0o022)  # the interpreter directories recreated below must be enterable by the sandbox user
    if job["mount_ns"]:
        _private_mounts(job)
    os.chdir(job["workdir"])
    nofile = 64 + len(job["inputs"])
    resource.setrlimit(resource.RLIMIT_AS, (job["memory"], job["memory"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if job["uid"] is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (job["nproc"], job["nproc"]))
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])
    sys.addaudithook(_deny_network)


def _deny_network(event: str, args: tuple) -> None:
    if event.startswith("socket."):  # socket.__new__, .connect, .bind, .getaddrinfo, ...
        raise PermissionError(f"network access is disabled in the sandbox ({event})")


def _private_mounts(job: dict) -> None:
    import ctypes  # only here: the mount(2) call has no os.* wrapper in Python 3.11

    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        as_bytes = [None if s is None else s.encode() for s in (source, target, fstype, data)]
        if libc.mount(as_bytes[0], as_bytes[1], as_bytes[2], flags, as_bytes[3]) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")

    if job["uid"] is not None:
        _expose_interpreter(mount)
    for path in job["hidden_paths"]:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=64k,mode=0555")
    source = job["scratch"]
    for path in job["private_dirs"]:
        if os.path.isdir(path):
            mount(source, path, None, _MS_BIND, None)
            source = path  # the scratch dir may sit under a path just covered: bind from its new place


def _expose_interpreter(mount) -> None:
    """Keep the standard library importable after the uid drop, hiding everything else around it.

    When Python lives below a directory others cannot enter (pyenv under a 0700 /root), that
    directory is covered with an empty tmpfs and only the interpreter's own directories are bound
    back into it, so lazy imports work as `nobody` and the rest of /root stays invisible.
    """
    paths = sorted({sys.base_prefix, sys.base_exec_prefix, *(p for p in sys.path if os.path.isabs(p))})
    closed: dict[str, list[str]] = {}
    for path in paths:
        if not os.path.isdir(path) or any(path.startswith(p + "/") for ps in closed.values() for p in ps):
            continue
        parts = path.strip("/").split("/")
        ancestors = ["/" + "/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        top = next((a for a in ancestors if not os.stat(a).st_mode & 0o001), None)
        if top is not None:
            closed.setdefault(top, []).append(path)
    for top, inner in closed.items():
        handles = [(path, os.open(path, os.O_PATH)) for path in inner]  # reachable after the cover
        mount("tmpfs", top, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        for path, fd in handles:
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC, None)
            os.close(fd)


def _run_one(code, data: bytes, job: dict) -> tuple[str, int, bytes, bytes]:
    """Run the compiled program once in a forked child on `data`; returns status, exit code, outputs."""
    stdin_fd = os.memfd_create("stdin")
    view = memoryview(data)
    while view:
        view = view[os.write(stdin_fd, view) :]
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(code, stdin_fd, out_w, err_w, job)  # never returns
    for fd in (stdin_fd, out_w, err_w):
        os.close(fd)
    try:
        return _supervise_child(pid, out_r, err_r, job)
    finally:
        _kill_run(pid)
        _reap_orphans()


def _child(code, stdin_fd: int, out_w: int, err_w: int, job: dict) -> None:
    exit_code = 1
    try:
        os.setpgid(0, 0)  # its own group: the runner kills the run's descendants in one call
        os.dup2(stdin_fd, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # The runner's frame channel included. RLIMIT_NOFILE bounds the fds that can be open.
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        resource.setrlimit(resource.RLIMIT_CPU, (job["cpu"], job["cpu"] + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], job["fsize"]))
        # Fresh streams on the new fds; they live until os._exit, so no context managers.
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.argv = ["<program>"]
        exit_code = _exec_program(code)
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - e.g. flushing into a closed pipe: a failed run, not a crash
        exit_code = exit_code or 1
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(exit_code)  # whatever happens, the child never returns into the runner


def _exec_program(code) -> int:
    main = types.ModuleType("__main__")  # the program's own __main__ (pickle, `import __main__`)
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return (exc.code or 0) & 0xFF
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - the program's own error: report it like python would
        traceback.print_exc()
        return 1


def _supervise_child(pid: int, out_r: int, err_r: int, job: dict) -> tuple[str, int, bytes, bytes]:
    """Collect a run's output until it exits and its pipes close, within the deadline and output cap."""
    deadline = time.monotonic() + job["timeout"]
    out, err = bytearray(), bytearray()
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (out_r, err_r, pidfd):
        poller.register(fd, select.POLLIN)
    open_pipes, wait_status, verdict = {out_r, err_r}, None, None
    while (open_pipes or wait_status is None) and verdict is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            verdict = "timeout"
            break
        for fd, _ in poller.poll(remaining * 1000):
            if fd == pidfd:
                poller.unregister(pidfd)
                wait_status = os.waitpid(pid, 0)[1]
                _kill_run(pid)  # descendants holding the pipes open must not stall the run
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                poller.unregister(fd)
                open_pipes.discard(fd)
            elif fd == out_r:
                out += chunk
                if len(out) > job["max_output"]:
                    verdict = "output_limit"
            else:
                err = (err + chunk)[-_STDERR_TAIL:]
    if wait_status is None:
        _kill_run(pid)
        wait_status = os.waitpid(pid, 0)[1]
    for fd in (out_r, err_r, pidfd):
        os.close(fd)
    exit_code = os.waitstatus_to_exitcode(wait_status)
    if verdict is None:
        verdict = "ok" if exit_code == 0 else "timeout" if exit_code == -signal.SIGXCPU else "runtime_error"
    return verdict, exit_code, bytes(out[: job["max_output"]]), bytes(err)


def _kill_run(pid: int) -> None:
    """Kill what a run left running: in a PID namespace everything but us, else the run's group."""
    try:
        if os.getpid() == 1:
            os.kill(-1, signal.SIGKILL)  # PID 1 of a private namespace: cannot reach other sandboxes
        else:
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap_orphans() -> None:
    """Reap processes re-parented to us, so that they stop counting against RLIMIT_NPROC."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _send_frame(index: int, status: str, exit_code: int, out: bytes, err: bytes) -> None:
    view = memoryview(_FRAME.pack(index, STATUSES.index(status), exit_code, len(out), len(err)) + out + err)
    while view:
        view = view[os.write(1, view) :]


if __name__ == "__main__":
    # The runner half ends here, so that starting a sandbox does not pay for the parent's imports.
    os._exit(_runner_main(sys.argv[1]))  # frames are unbuffered writes: skip interpreter teardown

# ---------------------------------------------------------------------------------------------------
# Parent API: runs in the caller's process.
# ---------------------------------------------------------------------------------------------------

import contextlib  # noqa: E402
import functools  # noqa: E402
import pwd  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

_RUN_SLACK_S = 0.5  # per-run allowance on top of the run timeout for fork, frame and reaping


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation options for one program run in the sandbox."""

    timeout_s: float = 2.0
    """Wall-clock limit per run (one stdin input); CPU time is limited to the same, rounded up."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) of the program."""
    max_processes: int = 256
    """RLIMIT_NPROC for the sandbox user (threads count). It counts every process of that uid on the
    host: each running sandbox holds two (runner and program), so this must exceed twice the number
    of parallel sandboxes, and a fork bomb can briefly starve its neighbours of the rest. Applied
    only when dropping from root."""
    max_file_mb: int = 16
    """Largest file a run may write (RLIMIT_FSIZE)."""
    max_output_bytes: int = 4 << 20
    """Stdout read per run; a program printing more is killed and the run fails."""
    stack_mb: int = 256
    """Stack limit (recursive solutions), set with util-linux `prlimit` when it is installed."""
    user: str | None = "nobody"
    """Account to drop to when running as root; None keeps root (not recommended)."""
    use_namespaces: bool = True
    """Use network/PID/mount namespaces (util-linux `unshare`) when this host supports them."""
    private_dirs: tuple[str, ...] = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
    """World-writable directories replaced by the scratch directory inside the mount namespace; the
    first one is the program's cwd and HOME."""
    hidden_paths: tuple[str, ...] = ()
    """Directories covered by an empty read-only mount, e.g. where datasets with answers live."""
    scratch_root: str | None = None
    """Parent of the per-program scratch directories (default: the system temp dir)."""
    python: str = sys.executable
    """Interpreter that runs the programs (started with -I -S: stdlib only, no site-packages)."""
    startup_timeout_s: float = 10.0
    """Allowance for starting the runner, added to the per-program deadline."""

    def __post_init__(self) -> None:
        for name in ("timeout_s", "startup_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0 seconds (got {getattr(self, name)})")
        for name in ("memory_mb", "max_processes", "max_file_mb", "max_output_bytes", "stack_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"SandboxConfig.{name} must be >= 1 (got {getattr(self, name)})")


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
    "timeout" (the whole-program deadline), or "crashed" (the runner itself died; see `detail`).
    """

    status: str
    runs: tuple[RunOutcome, ...]
    detail: str = ""


class SandboxError(RuntimeError):
    """The sandbox could not be set up on this host: an infrastructure failure, not the program's."""


class Sandbox:
    """Runs untrusted Python programs under every isolation layer this host supports; thread-safe."""

    def __init__(self, config: SandboxConfig = SandboxConfig()) -> None:
        self.config = config
        self._ids = _target_ids(config.user) if os.geteuid() == 0 and config.user is not None else None
        self._unshare = _unshare_command(os.geteuid() == 0) if config.use_namespaces else ()
        self._prlimit = shutil.which("prlimit")
        if self._ids is not None and not self._unshare:
            _check_interpreter_reachable(config.python)
        self._workdir = config.private_dirs[0] if self._unshare and config.private_dirs else None
        layers = {"process", "rlimits", "audit_hook", "clean_env", "scratch_dir", "wall_clock", "output_cap"}
        if self._unshare:
            layers |= {"net_namespace", "pid_namespace", "mount_namespace"}
        if self._ids is not None:
            layers |= {"uid_drop", "nproc_limit"}
        self.layers = frozenset(layers)

    def run(
        self,
        source: str,
        inputs: Sequence[bytes | str],
        stop: Callable[[int, RunOutcome], bool] | None = None,
    ) -> SandboxReport:
        """Run `source` once per input, in order; `stop(index, outcome)` returning True ends early."""
        cfg = self.config
        data = [x.encode() if isinstance(x, str) else bytes(x) for x in inputs]
        scratch = tempfile.mkdtemp(prefix="srpo-sandbox-", dir=cfg.scratch_root)
        try:
            if self._ids is not None:
                os.chown(scratch, *self._ids)
            job_path = os.path.join(scratch, ".job")
            with open(job_path, "wb") as f:
                marshal.dump(self._job(source, data, scratch), f)
            proc = subprocess.Popen(
                self._command(job_path),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=scratch,
                env=self._env(scratch),
                start_new_session=True,  # one process group: a single kill reaches the whole tree
            )
            try:
                return self._collect(proc, len(data), stop)
            finally:
                _kill_group(proc)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _job(self, source: str, data: list[bytes], scratch: str) -> dict:
        cfg = self.config
        uid, gid = self._ids if self._ids is not None else (None, None)
        return {
            "source": source,
            "inputs": data,
            "scratch": scratch,
            "workdir": self._workdir or scratch,
            "mount_ns": bool(self._unshare),
            "private_dirs": list(cfg.private_dirs),
            "hidden_paths": list(cfg.hidden_paths),
            "uid": uid,
            "gid": gid,
            "nproc": cfg.max_processes,
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
            os.path.abspath(__file__),
            job_path,
        ]

    def _env(self, scratch: str) -> dict[str, str]:
        home = self._workdir or scratch
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}

    def _collect(self, proc: subprocess.Popen, n_runs: int, stop) -> SandboxReport:
        """Read frames as they arrive until every run reported, the deadline passed, or `stop` said so."""
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
                        diagnostics = (diagnostics + chunk)[-_STDERR_TAIL:]
                    else:
                        for index, outcome in frames.feed(chunk):
                            if index < 0:
                                return _program_failure(outcome)
                            if stop is not None and stop(index, outcome):
                                return SandboxReport("stopped", tuple(frames.runs))
        if len(frames.runs) == n_runs:
            return SandboxReport("completed", tuple(frames.runs))
        detail = f"runner exited with {proc.wait()}: {diagnostics.decode(errors='replace').strip()}"
        return SandboxReport("crashed", tuple(frames.runs), detail)


class _FrameReader:
    """Incremental decoder of the runner's frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.runs: list[RunOutcome] = []

    def feed(self, chunk: bytes) -> list[tuple[int, RunOutcome]]:
        self._buffer += chunk
        decoded = []
        while len(self._buffer) >= _FRAME.size:
            index, status, exit_code, n_out, n_err = _FRAME.unpack_from(self._buffer)
            end = _FRAME.size + n_out + n_err
            if len(self._buffer) < end:
                break
            out = bytes(self._buffer[_FRAME.size : _FRAME.size + n_out])
            err = self._buffer[_FRAME.size + n_out : end].decode(errors="replace")
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


def _target_ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SandboxError(
            f"SandboxConfig.user {user!r} does not exist on this host; create it or set user to an "
            "existing unprivileged account (e.g. 'nobody')"
        ) from None
    if entry.pw_uid == 0:
        raise SandboxError(f"SandboxConfig.user {user!r} is uid 0; pick an unprivileged account")
    return entry.pw_uid, entry.pw_gid


@functools.cache
def _unshare_command(as_root: bool) -> tuple[str, ...]:
    """The `unshare` prefix that works on this host, or () when none does.

    Probed once per process and memoised: a fact about the host, and the probe costs a process start.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    flags = ["--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if not as_root:
        flags = ["--user", "--map-root-user", *flags]
    probe = subprocess.run([unshare, *flags, "true"], capture_output=True, timeout=30, check=False)
    return (unshare, *flags) if probe.returncode == 0 else ()


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
                "at a world-readable interpreter, or set SandboxConfig.user=None"
            )
        path = os.path.dirname(path)
