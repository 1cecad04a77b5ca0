"""Exclusive advisory locks on outputs: two zsw processes never write into one output at once.

A lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a file descriptor, so the kernel drops it when
the process ends, however it ends (a killed run leaves nothing that looks held):

* a **folder** (a training run, an export, a dataset, one photo's result folder) is locked on its
  own descriptor (``os.open(folder, O_RDONLY)``), so no lock file litters the folder;
* a **single file** (``zsw eval``'s summary JSON) is replaced by rename on every write, so its own
  inode cannot carry a lock: a hidden sibling ``.<name>.lock`` does, created for the run and
  removed when it ends (left behind only by a killed run, and harmless then: a file nobody holds
  is free). Locking the file's folder instead would stop two evaluations into other files of one
  folder, or an evaluation into a run folder that is training.

Locks are advisory and only zsw takes them. Two separate ``open()`` calls conflict even within
one process (threads, tests). The holder is named in the error from ``/proc/locks`` (Linux) and
its ``/proc/<pid>/cmdline``; a lock file also records its holder's pid for other systems.
Without ``fcntl`` (Windows), or on a file system that refuses ``flock`` on a folder (NFS mounts
where locks are emulated with POSIX locks, which need a writable descriptor), nothing is locked:
the output works as before, unprotected.

After locking, the path is checked to still name the locked inode (a folder removed and made
again, a lock file removed by its last holder): if not, the lock is taken again on the new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from zsw.errors import ZswError
from zsw.io import check_out_folder

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["OutputBusyError", "Lock", "try_lock_folder", "lock_folder", "lock_file", "wait_folder", "holder"]


class OutputBusyError(ZswError):
    """Another live process is writing to this output (it holds its lock)."""


class Lock:
    """A held lock (or, where nothing can be locked, a stand-in that holds nothing); a context
    manager. :meth:`release` unlocks and removes what the lock made: the lock file, the folders
    it created if they are still empty (so a run that fails before writing leaves nothing)."""

    def __init__(self, path: Path, fd: int | None, lock_file: Path | None = None, created: list[Path] | None = None):
        self.path, self.fd, self.lock_file, self.created = path, fd, lock_file, created or []
        self._released = False

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        """Unlock (once; a second call does nothing)."""
        if self._released:
            return
        self._released = True
        # removed while still held: whoever waits on the old inode sees it gone and locks anew
        if self.lock_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_file)
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:  # written into: kept, with every folder above it
                break
        if self.fd is not None:
            # unlocked explicitly: a forked child (a DataLoader or pool worker) that inherited the
            # descriptor would otherwise keep the lock until it exits
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those this call created, top first."""
    retries = 0
    while True:
        created = []
        missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
        if link := next((p for p in missing if p.is_symlink()), None):  # an unmounted drive's folder, say
            raise OSError(errno.ENOENT, "a link to a folder that does not exist", str(link))
        try:
            for p in missing:
                with contextlib.suppress(FileExistsError):  # made meanwhile by someone else: theirs
                    p.mkdir()
                    created.append(p)
            return created
        except FileNotFoundError as e:
            # a parent removed meanwhile (an empty one, by its maker's release) is made again; one
            # that is there and refuses folders (/proc) is an error, not a loop
            retries += 1
            if Path(e.filename).parent.exists() or retries > 20:
                raise OSError(e.errno, f"cannot make a folder there ({e.strerror})", e.filename) from None


_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


def _flock(fd: int, block: bool) -> bool | None:
    """True: locked; False: another holder; None: this file system cannot lock it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise


def _same_inode(path: Path, fd: int) -> bool:
    try:
        st, held = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


def _take(path: Path, flags: int, block: bool) -> tuple[int | None, str]:
    """Open ``path`` with ``flags`` and lock it: ``(fd, "locked")``, or ``(None, why)`` with why
    ``"unlockable"`` (nothing can be locked there), ``"busy"`` (another process holds it) or
    ``"gone"`` (no such path)."""
    if fcntl is None:
        return None, "unlockable"
    while True:
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            return None, "gone"
        locked = _flock(fd, block)
        if locked and _same_inode(path, fd):
            return fd, "locked"
        os.close(fd)
        if locked is None:
            return None, "unlockable"
        if not locked:
            return None, "busy"
        # locked an inode the path no longer names (removed, made again): lock the new one


def try_lock_folder(folder: str | os.PathLike, create: bool = True) -> Lock | None:
    """The lock of ``folder`` (created with its parents when ``create``; those it created are
    removed again on release while still empty), or None while another process holds it (or,
    without ``create``, when it does not exist)."""
    folder = Path(folder)
    while True:
        created = _make_folders(folder) if create else []
        fd, state = _take(folder, _FOLDER, block=False)
        if state != "gone" or not create:  # gone: removed between the two by its maker's release
            break
    if state in ("busy", "gone"):
        return None
    return Lock(folder, fd, created=created)


def wait_folder(folder: str | os.PathLike) -> None:
    """Block until no process holds ``folder``'s lock (at once if it does not exist)."""
    fd, _ = _take(Path(folder), _FOLDER, block=True)
    if fd is not None:
        os.close(fd)


def lock_folder(folder: str | os.PathLike, option: str = "--out") -> Lock:
    """Lock ``folder`` for a run (made with its parents when missing), or raise
    :class:`OutputBusyError` naming its holder and ``option`` (an :class:`~zsw.errors.OptionError`
    when ``folder`` or a folder above it is a file)."""
    check_out_folder(folder, option)
    lock = try_lock_folder(folder)
    if lock is None:
        raise OutputBusyError(_busy(Path(folder), option))
    return lock


def lock_file(target: str | os.PathLike, option: str = "--out") -> Lock:
    """Lock the single-file output ``target`` for a run through ``.<name>.lock`` beside it (see
    the module docstring), or raise :class:`OutputBusyError`."""
    target = Path(target)
    created = _make_folders(target.parent)
    sibling = target.with_name(f".{target.name}.lock")
    fd, state = _take(sibling, os.O_RDWR | os.O_CREAT, block=False)
    if state == "busy":
        raise OutputBusyError(_busy(target, option, sibling))
    if fd is None:  # nothing can be locked here: no lock file either
        with contextlib.suppress(OSError):
            sibling.unlink()
        return Lock(target, None, created=created)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return Lock(target, fd, lock_file=sibling, created=created)


def _busy(path: Path, option: str, lock_file: Path | None = None) -> str:
    who = holder(lock_file or path)
    return f"another process is writing to {path}{f' ({who})' if who else ''}; stop it or choose another {option}"


def holder(path: str | os.PathLike) -> str | None:
    """``"pid 1234: zsw train --out runs/x"`` for the process holding ``path``'s lock (the
    command where it can be read), or None when it cannot be told."""
    pid = _pid_from_proc_locks(Path(path))
    if pid is None:
        with contextlib.suppress(OSError, ValueError, IndexError):  # IndexError: locked, pid not yet written
            pid = int(Path(path).read_text().split()[0]) if Path(path).is_file() else None
    if pid is None:
        return None
    command = _command(pid)
    return f"pid {pid}: {command}" if command else f"pid {pid}"


def _pid_from_proc_locks(path: Path) -> int | None:
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:16039961 0 EOF"; "1: -> FLOCK ..." is a waiter
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
            with contextlib.suppress(ValueError):
                return int(fields[4]) if int(fields[4]) > 0 else None
    return None


def _command(pid: int, width: int = 100) -> str | None:
    """The holder's command line, without the Python interpreter that runs it."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    args = [a for a in args if a]
    while args and (Path(args[0]).name.startswith("python") or args[0] == "-m"):
        args = args[1:]
    if not args:
        return None
    text = " ".join([Path(args[0]).name, *args[1:]])
    return text if len(text) <= width else text[: width - 3] + "..."
