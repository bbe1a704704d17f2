"""The sandbox runner: executes inside the sandbox as `python -I -S -B sandbox_runner.py JOB`.

Kept apart from the parent API (`sandbox.py`, which documents the layers and the protocol) and to
the standard library, because the interpreter compiles this whole file at every program start.
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

STATUSES = ("ok", "runtime_error", "timeout", "output_limit", "compile_error", "setup_error")
FRAME = struct.Struct("<iiiII")  # run index (-1: whole program), status, exit code, len(out), len(err)
STDERR_TAIL = 4096  # bytes of stderr kept per run: enough for the last traceback lines
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_RELATIME = 1, 2, 4, 32, 4096, 16384, 1 << 21
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_DEVICES = ("null", "zero", "full", "random", "urandom")


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
    os.umask(0o022)  # directories made for the private root must be enterable by the sandbox user
    if job["root"]:
        _enter_private_root(job)
    os.chdir(job["workdir"])
    nofile = 64 + len(job["inputs"])
    resource.setrlimit(resource.RLIMIT_AS, (job["memory"], job["memory"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if job["nproc"]:
        resource.setrlimit(resource.RLIMIT_NPROC, (job["nproc"], job["nproc"]))
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["uid"])
        os.setuid(job["uid"])
    sys.addaudithook(_deny_network)


def _deny_network(event: str, args: tuple) -> None:
    if event.startswith("socket."):  # socket.__new__, .connect, .bind, .getaddrinfo, ...
        raise PermissionError(f"network access is disabled in the sandbox ({event})")


def _enter_private_root(job: dict) -> None:
    """Build the deny-by-default root in an empty tmpfs and pivot into it, detaching the host's.

    pivot_root, not chroot: with the old root unmounted nothing of the host filesystem is left to
    escape to, even for a namespace root (the non-root mode keeps uid 0 of its user namespace).
    """
    import ctypes  # only here: mount(2) and pivot_root(2) have no os.* wrappers in Python 3.11

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        as_bytes = [None if s is None else s.encode() for s in (source, target, fstype, data)]
        check(libc.mount(as_bytes[0], as_bytes[1], as_bytes[2], flags, as_bytes[3]), f"mount {source} on {target}")

    root = job["root"]
    mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    # The scratch dir: a size-limited tmpfs (a program cannot fill the host's disk), seen at
    # every private dir.
    scratch = root + job["private_dirs"][0]
    os.makedirs(scratch)
    owner = "" if job["uid"] is None else f",uid={job['uid']},gid={job['uid']}"
    mount("tmpfs", scratch, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={job['scratch_bytes']},mode=0700{owner}")
    binds = [(path, path, True) for path in job["expose"]]
    binds += [(scratch, path, False) for path in job["private_dirs"][1:]]
    binds += [("/proc", "/proc", False)] + [(f"/dev/{name}", f"/dev/{name}", False) for name in _DEVICES]
    for source, target, read_only in binds:
        _bind(mount, source, root + target, read_only)
    for link, target in job["links"]:
        os.symlink(target, root + link)
    os.chdir(root)
    check(libc.syscall(_SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    check(libc.umount2(b".", _MNT_DETACH), "detaching the host root")
    os.chdir("/")
    mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, None)


def _bind(mount, source: str, target: str, read_only: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    mount(source, target, None, _MS_BIND | _MS_REC, None)
    if read_only:
        # A user namespace may only add restrictions: keep the host mount's noexec and atime flags.
        host = os.statvfs(target).f_flag
        kept = host & (os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME)
        kept |= _MS_RELATIME if host & os.ST_RELATIME else 0
        mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | kept, None)


def _run_one(code, data: bytes, job: dict) -> tuple[str, int, bytes, bytes]:
    """Run the compiled program once in a forked child on `data`; returns status, exit code, outputs."""
    stdin_fd = os.memfd_create("stdin")
    view = memoryview(data)
    while view:
        view = view[os.write(stdin_fd, view) :]
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:  # only this sandbox's processes count against its limit: the program's fault
        for fd in (stdin_fd, out_r, out_w, err_r, err_w):
            os.close(fd)
        return "runtime_error", 1, b"", f"could not start the run: {exc}".encode()
    if pid == 0:
        _child(code, stdin_fd, out_w, err_w, job)  # never returns
    for fd in (stdin_fd, out_w, err_w):
        os.close(fd)
    try:
        return _supervise_child(pid, out_r, err_r, job)
    finally:
        _kill_run(pid, job)
        _reap_orphans(block=job["sole_user"])


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
                _kill_run(pid, job)  # descendants holding the pipes open must not stall the run
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
                err = (err + chunk)[-STDERR_TAIL:]
    if wait_status is None:
        _kill_run(pid, job)
        wait_status = os.waitpid(pid, 0)[1]
    for fd in (out_r, err_r, pidfd):
        os.close(fd)
    exit_code = os.waitstatus_to_exitcode(wait_status)
    if verdict is None:
        verdict = "ok" if exit_code == 0 else "timeout" if exit_code == -signal.SIGXCPU else "runtime_error"
    return verdict, exit_code, bytes(out[: job["max_output"]]), bytes(err)


def _kill_run(pid: int, job: dict) -> None:
    """Kill what a run left running: everything but us when nothing else shares our PID namespace
    or uid (kill(-1) spares the caller, and reaches setsid() escapees), else the run's group."""
    try:
        if job["sole_user"]:
            os.kill(-1, signal.SIGKILL)
        else:
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap_orphans(block: bool) -> None:
    """Reap processes re-parented to us, so that they stop counting against RLIMIT_NPROC. After a
    kill(-1) every one of them is dying: wait for all, so the next run starts with a clean count."""
    while True:
        try:
            if os.waitpid(-1, 0 if block else os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _send_frame(index: int, status: str, exit_code: int, out: bytes, err: bytes) -> None:
    view = memoryview(FRAME.pack(index, STATUSES.index(status), exit_code, len(out), len(err)) + out + err)
    while view:
        view = view[os.write(1, view) :]


if __name__ == "__main__":
    os._exit(_runner_main(sys.argv[1]))  # frames are unbuffered writes: skip interpreter teardown
