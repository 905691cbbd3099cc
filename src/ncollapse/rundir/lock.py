"""One process at a time per run directory: an exclusive lock held for the life of a run.

The lock is an ``fcntl.flock`` on ``RUN/.lock``. The kernel drops it when the process exits in
any way (return, exception, signal, SIGKILL), so a lock file left by a dead process is stale by
construction: the next run takes it over. The file records who holds it (pid, host, start time,
command) so that a refused second run can name the holder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ncollapse.rundir.layout import LOCK

try:  # POSIX; elsewhere runs are not locked (documented in docs/reliability.md)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLocked", "RunLock"]


class RunLocked(OSError):
    """Another live process holds the run directory (an OSError, like EBUSY)."""


class RunLock:
    """The exclusive lock of one run directory; :meth:`acquire` fails at once if it is held."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLocked` naming the holder (never waits)."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                os.close(fd)
                raise RunLocked(f"{self.path.parent} is in use by {holder}; wait for it to end "
                                "or choose another --out") from None
            except OSError:  # a filesystem without flock support: proceed unlocked
                pass
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError:  # e.g. a full disk: the lock itself still holds
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a process taking it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe_holder(fd: int, wait: float = 1.0) -> str:
    """Who holds the lock, from the file's record. A holder that has just taken the lock may
    not have written its record yet, so an empty or partial record is read again for up to
    ``wait`` seconds before the holder is called "another process"."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            info = {}
        if isinstance(info, dict) and "pid" in info:
            break
        if time.monotonic() >= deadline:
            return "another process"
        time.sleep(0.02)
    where = f" on {info['host']}" if info.get("host") else ""
    since = f" since {info['started']}" if info.get("started") else ""
    command = f" ({info['command']})" if info.get("command") else ""
    return f"process {info['pid']}{where}{since}{command}"
