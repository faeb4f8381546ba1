"""An exclusive lock on an attack run's output folder (one writing run at a time).

:class:`~lit_advgame.predict.writer.AdversarialWriter` takes the lock ``<output_dir>/.lock`` when a
predict run starts (once per run: on global rank 0 under DDP, so the ranks of one run never refuse
each other) and releases it when the run ends, fails or is interrupted. A second run started on the
same folder meanwhile is refused with a message naming the running one, instead of interleaving its
shards and ``meta.json`` with the first run's.

The lock is an advisory ``flock`` held on the open file, which the kernel drops when the process
dies, plus the holder's pid, host and start time written into the file for the messages:

* held by a live process -> refused: wait for that run, or choose another ``output_dir``;
* left behind by a run on *this* host whose process is gone (killed with SIGKILL, power loss) ->
  **taken over automatically** with a warning naming the dead run (nothing can still be writing:
  the flock is free and the pid is gone);
* left behind by a run on *another* host (a shared file system) whose ``flock`` is free -> refused,
  since this host cannot tell whether that run is alive (``flock`` is not reliable across hosts on
  every network file system): delete the lock file if that run is no longer running, then rerun.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class OutputLockedError(RuntimeError):
    """The output folder is locked by another run (or by a stale lock this host cannot clear)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')!r}, started {when}"


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode("utf-8", errors="replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


class OutputLock:
    """The lock file ``<directory>/.lock``: :meth:`acquire` it, then :meth:`release` it (idempotent).

    ``acquire`` returns a warning text when it took over a stale lock of a dead run on this host
    (``None`` otherwise) and raises :class:`OutputLockedError` when the folder is locked.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> str | None:
        if self._fd is not None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise OutputLockedError(
                    f"output_dir {str(self.path.parent)!r} is locked by another predict run "
                    f"({_describe(holder)}; lock file {str(self.path)!r}); wait until it ends or choose another "
                    f"output_dir. Two runs writing one folder would mix their shards and meta.json."
                ) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the previous holder removed the file while we waited for it: lock the new one
        holder = _read_holder(fd)
        warning = None
        if holder:
            here = socket.gethostname()
            pid = holder.get("pid")
            if holder.get("host") != here:
                os.close(fd)
                raise OutputLockedError(
                    f"output_dir {str(self.path.parent)!r} holds the lock file of a run on another host "
                    f"({_describe(holder)}) that this host cannot check; if that run is no longer running, delete "
                    f"{str(self.path)!r} and rerun (the run resumes from the saved shards)"
                )
            if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
                what = "whose pid is now used by another process"
            else:
                what = "whose process is gone"
            warning = (
                f"took over the stale lock of an earlier predict run in {str(self.path.parent)!r} "
                f"({_describe(holder)}, "
                f"{what}: it was killed or crashed); this run resumes from its saved shards"
            )
        payload = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(payload) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return warning

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no one can lock a file we are deleting
        finally:
            os.close(fd)
