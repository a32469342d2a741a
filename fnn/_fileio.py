"""Safe file reads and atomic writes, shared by ``checkpoint`` and ``data``.

Writes (:func:`write_atomic`) go to a temporary file in the target's folder,
are flushed and fsynced, then renamed over the target with ``os.replace``,
and the folder is fsynced: a process killed at any moment leaves the old file
or the new one, whole. The temporary's name, ``.<name>.<host>-<pid>.<random>
.tmp``, records its writer, so that the next write of the same target removes
the temporaries whose writer process is gone (a killed save leaves one behind,
as large as the file). The host tag keeps a write from judging the processes
of another machine sharing the folder; on Windows nothing is removed (there
is no harmless way to ask whether a process lives).

Overwriting keeps the target's permission bits. A target that is a symbolic
link is written *through*: the file it points to is replaced, and the link
stays a link.

Reads (:func:`read_regular`) refuse anything but a regular file — a FIFO, a
device, a folder — without blocking, and never read more bytes than asked.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["read_regular", "remove_stale_temporaries", "write_atomic"]

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temporary_name(target: Path) -> Path:
    return target.with_name(
        f".{target.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(6)}.tmp"
    )


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (POSIX only)."""
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Removes the temporaries of earlier writes of ``target`` whose writer died.

    Only names ``.<target name>.<this host>-<pid>.<hex>.tmp`` whose ``pid`` is
    neither this process nor a living one are removed; every other file is
    left alone. Does nothing on Windows.

    Args:
      target: the file whose stale temporaries to remove.

    Returns:
      The paths removed.
    """
    target = Path(target)
    if os.name == "nt":
        return []
    pattern = re.compile(
        re.escape(f".{target.name}.{_HOST}-") + r"(\d+)\.[0-9a-f]{12}\.tmp"
    )
    removed = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(target.parent / name)
        except OSError:  # gone already, or not ours to remove
            continue
        removed.append(target.parent / name)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Writes a file atomically: ``path`` ends whole-old or whole-new.

    ``write(f)`` fills a fresh temporary file ``f`` in the target's folder;
    the temporary is then fsynced and renamed over the target. If ``write``
    raises, the temporary is removed and the target is untouched. Before
    writing, stale temporaries of killed earlier writes are removed
    (:func:`remove_stale_temporaries`).

    Args:
      path: the file to write. If it is a symbolic link, the file it points to
        is replaced and the link kept. If it exists, its permission bits are
        kept; a new file gets the usual ``0o666 & ~umask``.
      write: a function writing the content to the binary file it is given.

    Returns:
      The path actually replaced (the link's target for a link).

    Raises:
      OSError: the folder is missing or not writable, the disk is full, etc.;
        the target is then untouched.
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    remove_stale_temporaries(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    tmp = _temporary_name(target)
    try:
        with open(tmp, "xb") as f:
            if mode is not None:
                os.chmod(tmp, mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)
    return target


def read_regular(
    path: str | os.PathLike,
    check: Callable[[bytes, int], int],
    *,
    head: int,
) -> bytearray:
    """Reads a regular file in two steps: a head, then what the head promises.

    The file is opened without blocking (a FIFO with no writer would otherwise
    hang ``open``), and anything but a regular file is refused before a byte
    is read. ``check(first_bytes, file_size)`` sees the first ``head`` bytes
    (fewer if the file is shorter) and the file's size, raises if they are
    wrong, and returns how many bytes the whole file must have; exactly those
    are read.

    Args:
      path: the file to read.
      check: validates the head, returns the total size to read.
      head: how many leading bytes ``check`` needs.

    Returns:
      The file's first ``check(...)`` bytes (the whole file when ``check``
      returns its size).

    Raises:
      IsADirectoryError: ``path`` is a folder.
      OSError: ``path`` is not a regular file (a FIFO, a socket, a device),
        it shrank while being read, or it cannot be opened or read;
        FileNotFoundError when missing.
      Whatever ``check`` raises.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(f"{os.fspath(path)!r} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise OSError(
                f"{os.fspath(path)!r} is not a regular file (a FIFO, socket or "
                "device); refusing to read it"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            first = f.read(head)
            total = check(first, info.st_size)
            out = bytearray(total)
            got = min(len(first), total)
            out[:got] = first[:got]
            view = memoryview(out)
            while got < total:
                n = f.readinto(view[got:])
                if not n:
                    raise OSError(f"{os.fspath(path)!r} shrank while being read")
                got += n
        return out
    finally:
        os.close(fd)
