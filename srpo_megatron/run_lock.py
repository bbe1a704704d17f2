"""One trainer per run directory: an exclusive lock on `<run_dir>/run.lock` for the life of the run.

Two trainers writing one run directory interleave their checkpoints and metrics, and a resume then
picks up a mixture. The lock is a `flock` on the file, so the kernel (or the NFSv4 / Lustre lock
server) releases it when its holder dies, even by SIGKILL: a requeued job on another node is never
locked out by a dead one. The file says who holds it (host, pid, start time) for the error another
trainer gets. The file is never deleted: unlinking a lock file lets a third process lock a new inode
while the second still holds the old one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = "run.lock"


class RunDirInUse(RuntimeError):
    """Another live trainer holds the run directory; the message names its host and pid."""


class RunLock:
    """Held from construction until `release()` (or the process's death)."""

    def __init__(self, run_dir: str | Path):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK_FILE
        # O_CLOEXEC: processes the trainer starts (graders, sandboxes) must not inherit the lock.
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = self._holder()
            os.close(self._fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunDirInUse(
                    f"run directory {run_dir} is in use by another trainer: {holder} (lock {self.path}). "
                    "Wait for it to end or stop it, or set training.run_dir to another directory"
                ) from None
            raise OSError(err.errno, f"cannot lock {self.path}: {err.strerror}; training.run_dir must be on a "
                          "filesystem with flock support (Lustre: mount with -o flock)") from None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)

    def _holder(self) -> str:
        try:
            record = json.loads(os.pread(self._fd, 4096, 0))
            return f"pid {record['pid']} on host {record['host']}, since {record['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "a process that is still starting (no holder recorded yet)"

    def release(self) -> None:
        """Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
