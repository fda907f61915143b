"""One writer per folder: an advisory lock that every avdali command which writes a folder holds while it writes.

The lock is ``fcntl.flock`` on ``FOLDER/.avdali-lock``. The kernel releases a flock when its holder's last file
descriptor closes, so a run that is killed (SIGKILL, OOM killer) leaves no lock behind, only the file: there is no
pid-file guessing about whether the holder still lives, and no lock that outlives a crash. The file holds who took
the lock (pid, host, start time, command) so that a second writer can say whom it is waiting for, and a run that
finds a file whose lock is free knows it is taking over from a run that died.

The file is removed when the lock is released, so a finished folder holds exactly what the command wrote (shard
folders stay byte-identical between runs; nothing new for the packer's cleanup or a loader to see). Removing it
while another process may have opened it is safe because a taker checks, once it holds the flock, that the path
still names the file it locked, and starts over when it does not.

Readers never take the lock: shards say whether they are finished in ``manifest.json`` (``complete``), and
checkpoints are replaced atomically. No torch here (``sources``/``packing`` use it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from avdali.errors import AvdaliError

LOCK_NAME = ".avdali-lock"
"""The lock file inside a locked folder (hidden, no ``.tmp``/``.tar`` suffix: no listing of avdali's matches it)."""

_READ_HOLDER_S = 1.0
"""How long a refused writer waits for the holder's details: a holder writes them right after it takes the lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a folder's lock."""

    pid: int
    """Process id on ``host``."""
    host: str
    """``socket.gethostname()`` of the holder."""
    started: str
    """When it took the lock: UTC, ``YYYY-mm-dd HH:MM:SS UTC``."""
    command: str
    """What holds it, e.g. ``avdali shard``."""

    def describe(self) -> str:
        return f"{self.command} (pid {self.pid} on host {self.host}, started {self.started})"

    def is_dead_here(self) -> bool:
        """True when the holder ran on this host and no process with its pid exists any more."""
        if self.host != socket.gethostname() or self.pid <= 0:  # kill(0 or -1) would signal groups, not a pid
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # someone else's process lives under that pid
        return False

    @staticmethod
    def parse(data: bytes) -> Holder | None:
        try:
            d = json.loads(data.decode("utf-8"))
            return Holder(int(d["pid"]), str(d["host"]), str(d["started"]), str(d["command"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class FolderBusy(AvdaliError):
    """Another process holds the folder's lock; the message names the folder and the holder."""

    def __init__(self, folder: Path, holder: Holder | None):
        who = holder.describe() if holder else "another process (its details could not be read)"
        super().__init__(f"{folder}: in use by {who}; wait for it to finish or use another folder")
        self.folder = folder
        self.holder = holder


class FolderLock:
    """A held lock; ``release()`` (or leaving ``hold_folder``) gives it up."""

    def __init__(self, folder: Path, fd: int, holder: Holder, previous: Holder | None, created: bool):
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.holder = holder
        self.previous = previous
        """The holder recorded in a lock file this run found unlocked (a run that died), else None."""
        self._fd: int | None = fd
        self._created = created

    def takeover_message(self) -> str | None:
        """One line saying whose stale lock was taken over, or None when there was none."""
        if self.previous is None:
            return None
        why = "which is no longer running" if self.previous.is_dead_here() else "which no longer holds it"
        return f"{self.folder}: took over the lock left by {self.previous.describe()}, {why}"

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # unlink while still holding the flock: whoever opened this file meanwhile sees it is gone and retries
            if _same_file(fd, self.path):
                self.path.unlink()
            if self._created:
                with contextlib.suppress(OSError):
                    self.folder.rmdir()  # only when empty: a run that failed before writing leaves no folder
        except OSError:
            pass  # the flock goes with the descriptor below; a leftover file only reads as stale next time
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> Holder | None:
    deadline = time.monotonic() + _READ_HOLDER_S
    while True:
        holder = Holder.parse(os.pread(fd, 4096, 0))
        if holder is not None or time.monotonic() > deadline:
            return holder
        time.sleep(0.02)


def acquire(folder: str | Path, command: str) -> FolderLock:
    """Take ``folder``'s lock now (creating the folder) or raise ``FolderBusy`` naming the holder; never waits."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AvdaliError(f"{folder}: exists and is not a folder")
    created = not folder.exists()
    path = folder / LOCK_NAME
    for _ in range(100):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # a releasing holder removed the folder it had created: make it again
        except OSError as e:  # not a folder on the way, read-only, full: nothing can be written there
            raise AvdaliError(f"{folder}: cannot write the folder ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise AvdaliError(f"{path}: cannot lock the folder ({e.strerror or e}); the filesystem may not support locks") from None
            holder = _read_holder(fd)
            os.close(fd)
            raise FolderBusy(folder, holder) from None
        if not _same_file(fd, path):
            os.close(fd)  # the holder we waited on removed this file as it finished: lock the current one
            continue
        previous = Holder.parse(os.pread(fd, 4096, 0))
        holder = Holder(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            command=command,
        )
        data = json.dumps(holder.__dict__).encode() + b"\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        return FolderLock(folder, fd, holder, previous, created)
    raise AvdaliError(f"{path}: could not take the lock (the lock file keeps being replaced)")


@contextlib.contextmanager
def hold_folder(folder: str | Path, command: str, on_takeover: Callable[[str], None] | None = None) -> Iterator[FolderLock]:
    """Hold ``folder``'s lock for the ``with`` block; ``on_takeover(line)`` hears about a stale lock taken over."""
    lock = acquire(folder, command)
    try:
        message = lock.takeover_message()
        if message and on_takeover is not None:
            on_takeover(message)
        yield lock
    finally:
        lock.release()
