"""Crash-safe file writes, shared by every module that saves something.

A write goes to a temporary file in the destination's folder and is moved over
the destination with ``os.replace`` only once complete, so a crash or Ctrl-C
never leaves a half-written tokenizer, shard, checkpoint or "latest" file.

- ``atomic_write(path, data)`` for bytes or text you already hold;
- ``with atomic_path(path) as tmp: save_file(state, tmp)`` for writers that want
  a file name (safetensors, ``torch.save``, matplotlib's ``savefig``);
- ``fsync_tree(folder)`` before a whole folder is renamed into place (checkpoints:
  see ``minillm.checkpoint``);
- ``FolderLock(path)``: an exclusive lock that a killed process can never leave held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from minillm.errors import RunFolderError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path``.

    If the body raises (or is interrupted), the temporary file is removed and
    ``path`` is left as it was. The file gets the usual permissions (0o666
    minus the umask), not the owner-only ones of a bare temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        fsync(tmp)  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        fsync(path.parent)  # and the rename itself survives a power cut
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically; return the path."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk. Folders on systems without that: a no-op."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # e.g. a folder on Windows
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """`fsync` every file and folder below `root` (before a folder is renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync(Path(folder) / name)
        fsync(folder)


def file_mode() -> int:
    """The permission bits a newly created file normally gets: 0o666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class FolderLock:
    """An exclusive lock file (`fcntl.flock`), e.g. a run folder's `.minillm.lock`, held while a run writes there.

    The kernel releases it when the process dies, even by SIGKILL, so a lock
    is never stale on one machine; the file left behind is free to take. The
    holder deletes the file while still holding the lock, and a new holder
    checks that the file it locked is still the one at the path, so two
    processes can never both hold it. On a network file system without locks,
    `break_lock()` removes a leftover file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)  # the lock file (created on acquire)
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> FolderLock:
        """Take the lock; held by another process: raise RunFolderError, or with `wait` block until it is free."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunFolderError(
                    f"{self.path.parent} is in use by a live run ({holder}); wait for it, stop it, or choose "
                    f"another --out. If no run is alive (e.g. on a network file system without locks), delete "
                    f"{self.path} (`--break-lock` on the command line)"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder deleted on release: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it (see the class docstring)
            os.close(self.fd)  # closing the last descriptor releases the lock
            self.fd = None

    def break_lock(self) -> None:
        """Remove a leftover lock file; refused while a live process on this machine holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(f"{self.path} is held by a live process; stop that run instead of breaking "
                                 "its lock") from None  # fmt: skip
        finally:
            os.close(fd)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
