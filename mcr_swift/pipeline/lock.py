"""The run-folder lock: one pipeline per run folder for the run's lifetime (issue 20, 2.1). An advisory
``flock`` on ``RUN_DIR/.lock``, which holds the holder's pid and start time: a second run stops at once
naming them; the kernel frees the lock of a killed run, and the next run says it takes over that stale
lock (its pid no longer runs)."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Optional


class RunLocked(ValueError):
    """The run folder is held by another live run (the CLI handler prints it, exit 2)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: Optional[int] = None
        self.stale: Optional[str] = None    # "pid N (started T)" of a dead holder taken over

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"{self.path.parent}: this run folder is in use by {holder}; wait for that run "
                            f"to end or stop it (another run would overwrite its outputs)") from None
        prev = os.read(fd, 200).decode(errors="replace").strip()
        if prev:
            try:
                pid = int(prev.split()[1])
            except (IndexError, ValueError):
                pid = -1
            if pid != os.getpid() and not _alive(pid):
                self.stale = prev
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S %Z')})\n".encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)          # a clean end leaves no holder behind
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
