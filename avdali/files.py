"""Writing files so that a crash never leaves half of one, and hashing them.

Every file avdali writes (shards, indexes, manifests, checkpoints, configs, reports, ``cv.json``) goes through
``atomic_write``: the data goes to ``<name>.tmp`` first and ``os.replace`` puts it under its name, so a killed or
failed write leaves either the previous file or the finished one. No torch here (the packer uses it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable

from avdali.errors import AvdaliError

TMP_SUFFIX = ".tmp"
"""Suffix of files being written; a resumed ``avdali shard`` deletes any left behind."""


def tmp_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed (``x.tar`` → ``x.tar.tmp``)."""
    return path.with_name(path.name + TMP_SUFFIX)


def write_error(path: Path, error: OSError, what: str = "") -> AvdaliError:
    """A failed write (disk full, read-only folder) as one line naming the file that was being written."""
    return AvdaliError(
        f"{path}: cannot write{' ' + what if what else ''} ({error.strerror or error}); "
        f"the previous {path.name}, if any, is unchanged"
    )


def os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error``: torch.save's zip writer, closing after a failed write, raises a RuntimeError
    of its own whose ``__context__`` is the OSError."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def remove_partial(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # best effort: the write error is the one to report
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], what: str = "") -> Path:
    """Call ``write(f)`` on ``path.tmp`` opened for binary writing, then ``os.replace`` it onto ``path``.

    A failed write removes the ``.tmp`` and raises ``write_error`` (``what`` names the kind of file in it); an error
    that does not come from the operating system (a bug in ``write``) passes through unchanged.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except Exception as e:
        cause = os_error(e)
        if cause is None:
            raise
        raise write_error(path, cause, what) from None
    finally:
        remove_partial(tmp)  # gone after the rename; a failed write leaves nothing behind
    return path


def atomic_write_bytes(path: str | Path, data: bytes, what: str = "") -> Path:
    """``atomic_write`` of ``data``."""
    return atomic_write(path, lambda f: f.write(data), what)


def atomic_write_text(path: str | Path, text: str, what: str = "") -> Path:
    """``atomic_write`` of ``text`` as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), what)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
