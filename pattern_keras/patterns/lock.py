"""The lock of a checkpoint: one fit writes a checkpoint at a time.

A fit with ``checkpoint_path`` resumes from the file it finds there. Were another fit (another
process, another thread) still writing that file, the second would adopt the first's partial
sums and both would then write their own mixtures of two datasets. So a fit holds a lock on the
checkpoint from before it reads it until it returns: a file ``<checkpoint>.lock`` beside it,
created with ``O_EXCL`` and holding its writer's identity (host, PID, process start, boot id,
start time, a random id), locked with ``flock`` while the fit runs.

A second fit finds the file and refuses (:class:`CheckpointInUseError`, naming the writer)
while the lock is live. It takes the lock over only when it is provably stale:

- the writer ran on this host (same host name and boot id) and no process holds the ``flock``
  (the kernel drops it when its holder exits, however it exits), and its process is gone: the
  PID is not running, or runs a process started at another time (a PID reused);
- or the writer ran on this host before the last reboot (another boot id).

A lock written on another host is never taken over: this host cannot see that host's processes
(a container with its own PID namespace is another host here, having its own host name). If that
fit is no longer running (its host went down, it was killed), delete the ``.lock`` file by hand;
the message says so. On a file system without ``flock`` (some network mounts), the same rules
hold with the PID test alone.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import threading
import uuid
import warnings
from typing import Any

try:  # POSIX; without it (Windows) the PID test alone decides
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["CheckpointInUseError", "CheckpointLock", "lock_path"]

#: Ids of the locks this process holds now (a lock file naming this process and an id missing
#: here was left by a fit of this process that is over).
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()
_ATTEMPTS = 20


class CheckpointInUseError(RuntimeError):
    """Another fit (another process, thread or host) is writing this checkpoint."""


def lock_path(checkpoint_path: str) -> str:
    """The lock file of a checkpoint: ``<checkpoint>.lock``, beside the file a symbolic link
    points to (two paths of one file share one lock)."""
    return os.path.realpath(os.fspath(checkpoint_path)) + ".lock"


class CheckpointLock:
    """Hold the lock of ``checkpoint_path`` (a context manager).

    Parameters
    ----------
    checkpoint_path : str
        The checkpoint a fit is about to resume from and write.

    Raises
    ------
    CheckpointInUseError
        If another fit holds the lock (naming its host, PID, start time and lock file).
    """

    def __init__(self, checkpoint_path: str) -> None:
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.path = lock_path(self.checkpoint_path)
        self._fd: int | None = None
        self.identity: dict[str, Any] = {}

    def __enter__(self) -> CheckpointLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or take over a provably stale one; raise if it is live."""
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        for _ in range(_ATTEMPTS):
            fd, created = _open(self.path)
            if fd is None:
                continue  # removed between our two opens: its writer just finished
            try:
                taken = self._take(fd, created)
            except BaseException:
                os.close(fd)
                raise
            if taken:
                self._fd = fd
                return
            os.close(fd)  # replaced meanwhile: look again
        raise CheckpointInUseError(
            f"Could not lock checkpoint '{self.checkpoint_path}': its lock file '{self.path}' "
            "kept changing (several fits starting on it at once?)."
        )

    def _take(self, fd: int, created: bool) -> bool:
        """Lock ``fd`` and write our identity into it; ``False`` if the path no longer names
        it; raises if the lock is live."""
        flocked = _try_flock(fd)
        if flocked is False:
            raise self._in_use(_read(fd))
        if not _names(self.path, fd):
            return False
        if not created:
            holder = _read(fd)
            if not _provably_stale(holder, flocked):
                raise self._in_use(holder)
            warnings.warn(
                f"Checkpoint '{self.checkpoint_path}': took over the lock of a fit that is no "
                f"longer running ({_describe(holder)}).",
                UserWarning,
                stacklevel=4,
            )
        self.identity = _identity()
        with _HELD_GUARD:
            _HELD.add(self.identity["id"])
        _write(fd, self.identity)
        return True

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _names(self.path, fd):
                os.remove(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)  # drops the flock
            with _HELD_GUARD:
                _HELD.discard(self.identity.get("id"))

    def _in_use(self, holder: dict[str, Any] | None) -> CheckpointInUseError:
        same_host = holder is not None and holder.get("host") == socket.gethostname()
        advice = (
            "Wait for it to finish, or use another checkpoint_path."
            if same_host
            else "Wait for it to finish, or use another checkpoint_path; if that fit is no "
            "longer running (its host went down, it was killed), delete the lock file."
        )
        return CheckpointInUseError(
            f"Checkpoint '{self.checkpoint_path}' is being written by another fit "
            f"({_describe(holder)}; lock file '{self.path}'): a second fit would mix its data "
            f"into that fit's sums. {advice}"
        )


# ----------------------------------------------------------------------------------------------


def _open(path: str) -> tuple[int | None, bool]:
    """``(fd, created)``: a new lock file, or the existing one (``None`` if it vanished)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        pass
    try:
        return os.open(path, os.O_RDWR), False
    except FileNotFoundError:
        return None, False


def _try_flock(fd: int) -> bool | None:
    """``True``: locked; ``False``: another open file holds it; ``None``: no ``flock`` here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, ...: a file system without locks
    return True


def _names(path: str, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here, there = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 1 << 16)
        holder = json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _write(fd: int, identity: dict[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(identity).encode("utf-8"))
    os.fsync(fd)


def _identity() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "boot_id": _boot_id(),
        "thread": threading.current_thread().name,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "id": uuid.uuid4().hex,
    }


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "a writer that has not yet written its name"
    return (
        f"host {holder.get('host')!r}, PID {holder.get('pid')}, thread "
        f"{holder.get('thread')!r}, started {holder.get('started')}"
    )


def _provably_stale(holder: dict[str, Any] | None, flocked: bool | None) -> bool:
    """Whether the lock's writer is certainly gone (see the module's docstring)."""
    if holder is None:
        # A writer between creating the file and naming itself holds the flock already: a
        # nameless file we could lock was left by a writer killed in between.
        return flocked is True
    if holder.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot is not None and holder.get("boot_id") not in (None, boot):
        return True  # written before this host's last reboot
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return flocked is True
    if pid == os.getpid():
        with _HELD_GUARD:
            return holder.get("id") not in _HELD  # a fit of this process that is over
    return not _running(pid, holder.get("process_start"))


def _running(pid: int, process_start: Any) -> bool:
    """Whether process ``pid`` runs, and is the one that started at ``process_start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process: running
    start = _process_start(pid)
    return process_start is None or start is None or start == process_start


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None
