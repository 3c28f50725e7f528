"""Atomic writes: a temporary file of ours in the destination folder, renamed into place when complete.

A failed or interrupted write never leaves a partial destination and never touches an existing one:

* any exception, Ctrl-C, SIGTERM or SIGHUP (see ``cleanup_on_signals``) removes the temporary file;
* a SIGKILL cannot be caught: the temporary file it leaves is named ``.<name>.<pid>-<random>.focus-surgery-tmp`` and
  locked (``flock``) by its writer while it exists; the next write into the same folder removes every such file
  whose process is gone and whose lock is free (never a live run's file, whatever its destination);
* the renames of one write (a ``.safetensors`` and its ``.json``) happen with SIGINT / SIGTERM / SIGHUP held back,
  so a signal lands before or after all of them; ``track_writes`` says which destinations were replaced;
* a destination that is a device, a FIFO or a socket is refused, never replaced (``/dev/null`` as root);
* a replaced destination keeps its permission bits; names up to the file system's limit work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import uuid
from pathlib import Path
from typing import Callable, Iterator

from .loader.errors import CheckpointError

TMP_SUFFIX = ".focus-surgery-tmp"
_NAME_MAX = 255


def _tmp_prefix(destination: Path) -> str:
    """``.<name>.`` with the name shortened so that prefix + pid + random part + suffix fit in one file name."""
    room = _NAME_MAX - len(TMP_SUFFIX) - 2 - 24  # dots, pid and a random part
    return "." + os.fsdecode(os.fsencode(destination.name)[:room]) + "."  # any bytes survive fsdecode


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process; a pid no process ever had
        pass
    return True


_TEMPORARY = re.compile(r"\.(?P<name>.*)\.(?P<pid>[0-9]+)-[0-9A-Za-z]+" + re.escape(TMP_SUFFIX), re.DOTALL)


def _lock(fd: int) -> bool:
    """Take the exclusive lock of an open temporary file without waiting; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: the pid check alone decides
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _remove_if_abandoned(path: str, pid: int) -> bool:
    """Remove our temporary file ``path`` if its writer (``pid``) is gone and nobody holds its lock."""
    if pid == os.getpid() or _alive(pid):
        return False
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or (os.geteuid() != 0 and info.st_uid != os.geteuid()):
            return False  # only regular files of this user: never a link, a FIFO or another user's file
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (OSError, AttributeError):
        return False
    try:
        if not _lock(fd) or os.fstat(fd).st_ino != info.st_ino:
            return False  # a live writer's lock (its pid seen from another pid namespace), or a replaced file
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_temporaries(destination: Path) -> list[Path]:
    """Remove the temporary files that killed runs (SIGKILL, SIGQUIT, power loss) left in ``destination``'s folder.

    Only files named as ours (``.<name>.<pid>-<random>.focus-surgery-tmp``), regular, of this user, whose writer no
    longer runs and whose lock is free: another live run's temporary file is never touched, whatever it writes.
    """
    return remove_stale_temporaries_in(Path(destination).parent)


def remove_stale_temporaries_in(folder: Path) -> list[Path]:
    """``remove_stale_temporaries`` for one folder (not its sub-folders)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            found = _TEMPORARY.fullmatch(entry.name)
            if found and _remove_if_abandoned(entry.path, int(found["pid"])):
                removed.append(Path(entry.path))
    return removed


_WRITTEN: list[list[Path]] = []  # destinations replaced inside each open ``track_writes`` block
_CHECKS: list[Callable[[list[tuple[Path, Path]]], None]] = []  # run on complete temporaries, before any rename


@contextlib.contextmanager
def checked_before_rename(check: Callable[[list[tuple[Path, Path]]], None]) -> Iterator[None]:
    """Within this block, every atomic write calls ``check([(destination, temporary), ...])`` once its temporary
    files are complete and before any is renamed: what was written is read back and proven before it is put in
    place. An exception from ``check`` removes the temporaries (nothing is put in place) and propagates."""
    _CHECKS.append(check)
    try:
        yield
    finally:
        _CHECKS.remove(check)


@contextlib.contextmanager
def track_writes() -> Iterator[list[Path]]:
    """Within this block, every destination an atomic write put in place is appended to the yielded list."""
    written: list[Path] = []
    _WRITTEN.append(written)
    try:
        yield written
    finally:
        _WRITTEN.remove(written)


def describe_written(paths: list) -> str:
    """``nothing was written``, or which files were (one line): what an interrupted run says it left."""
    if not paths:
        return "nothing was written"
    shown = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"{len(paths)} file{'s' if len(paths) > 1 else ''} written before it stopped: {shown}"


class Interrupted(BaseException):
    """SIGTERM / SIGHUP turned into an exception, so that every ``finally`` runs (as for Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Within this block SIGTERM and SIGHUP raise ``Interrupted`` (main thread only; elsewhere a no-op)."""

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, handler)
    except (ValueError, AttributeError):  # not the main thread, or no such signal on this platform
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _write_error(destination: Path, error: BaseException) -> CheckpointError:
    free = shutil.disk_usage(destination.parent).free if destination.parent.exists() else None
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    full = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if full or ("unexpected pos" in text and free is not None and free < (64 << 20)):  # torch's zip writer
        return CheckpointError(
            f"{destination}: write failed ({text}): the disk is full ({free or 0:,} bytes free); "
            "free some space and run again (nothing was written)"
        )
    return CheckpointError(f"{destination}: write failed ({text}); nothing was written")


SPECIAL_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO"}


def _check_destination(destination: Path) -> Path:
    folder = destination.parent
    if destination.is_dir():
        raise CheckpointError(f"{destination}: is a directory; give a file name to write")
    try:
        mode = os.stat(destination).st_mode  # through links: /dev/stdout -> /proc/self/fd/1 -> a pipe
    except OSError:
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        kind = SPECIAL_KINDS.get(stat.S_IFMT(mode), "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise CheckpointError(
            f"{destination}: is {kind}, not a regular file; refusing to replace it (write to a file instead)"
        )
    if not folder.is_dir():
        raise CheckpointError(f"{destination}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CheckpointError(f"{destination}: folder {folder} is not writable")
    return folder


def _final_mode(destination: Path) -> int:
    """The permission bits the written file gets: those of the file it replaces, else the usual 0666 & ~umask."""
    try:
        return destination.stat().st_mode & 0o777  # never set-id bits
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _new_temporary(destination: Path, folder: Path) -> tuple[Path, int]:
    """A new empty temporary file for ``destination`` and an open descriptor holding its lock while we write."""
    for _ in range(100):
        tmp = folder / f"{_tmp_prefix(destination)}{os.getpid()}-{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        # locked (released by the kernel when this process dies, however it dies) and still the file of that name:
        # between the open and the lock, a run to which our pid looks dead (another pid namespace) may remove it
        if _lock(fd) and _same_file(fd, tmp):
            return tmp, fd
        os.close(fd)
    raise OSError(errno.EAGAIN, f"no temporary file in {folder} could be kept locked")


def _same_file(fd: int, path: Path) -> bool:
    try:
        opened, named = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT / SIGTERM / SIGHUP that arrive within the block are handled when it ends (main thread only).

    Deferred by Python handlers, not ``pthread_sigmask``: in a process with other threads (torch starts some) the
    kernel hands a signal the main thread blocks to another thread, and Python raises it in the main thread anyway.
    """
    arrived: list[int] = []
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is not None:  # None: a handler set outside Python, which we cannot restore
                previous[signum] = signal.signal(signum, lambda signum, frame: arrived.append(signum))
    except ValueError:  # not the main thread: only the main thread runs Python's signal handlers
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)  # now handled as it would have been without the block


@contextlib.contextmanager
def _folders_locked(folders: list[Path]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on each folder (the folder itself: no lock file is left behind)."""
    import fcntl

    handles = []
    try:
        for folder in sorted(set(folders)):  # one order for every run: no deadlock between two pairs
            handles.append(os.open(folder, os.O_RDONLY | os.O_DIRECTORY))
            fcntl.flock(handles[-1], fcntl.LOCK_EX)
        yield
    finally:
        for handle in handles:
            os.close(handle)  # closing releases the lock


def atomic_write_all(writes: list[tuple[str | os.PathLike, Callable[[str], None]]], fsync: bool = True) -> list[Path]:
    """Write every ``(destination, write)`` pair to its own temporary file first, then rename them in order.

    A failure or interrupt while writing leaves every destination as it was; the renames come last, in the given
    order (e.g. a ``.safetensors`` before the JSON that describes it).

    Raises:
        CheckpointError: A destination folder is missing or not writable, or a write failed (disk full, ...).
    """
    plan = [(Path(d), write) for d, write in writes]
    folders = [_check_destination(d) for d, _ in plan]
    temporaries: list[Path] = []
    locks: list[int] = []
    current = plan[0][0]
    try:
        with cleanup_on_signals():
            for folder in dict.fromkeys(folders):
                remove_stale_temporaries_in(folder)
            for (destination, write), folder in zip(plan, folders):
                current = destination
                with signals_held():  # a signal between creating the file and listing it would leave it behind
                    tmp, lock = _new_temporary(destination, folder)
                    temporaries.append(tmp)
                    locks.append(lock)
                write(str(tmp))
                os.chmod(tmp, _final_mode(destination))  # after the write: a 0444 mode still writes
                if fsync:
                    with open(tmp, "rb") as done:
                        os.fsync(done.fileno())
            for check in list(_CHECKS):  # the written files, complete, proven before anything is renamed
                check([(d, t) for (d, _), t in zip(plan, temporaries)])
            with signals_held(), _folders_locked(folders if len(plan) > 1 else []):
                # all renames or none (a signal is handled after the last one), and a pair from a concurrent run
                # into the same folder never interleaves with ours (A's graph with B's data)
                for destination, _ in plan:
                    _check_destination(destination)  # a device or FIFO put there while we wrote
                for (destination, _), tmp in zip(plan, temporaries):
                    os.replace(tmp, destination)
                    for written in _WRITTEN:
                        written.append(destination)
                temporaries.clear()
    except (OSError, RuntimeError) as error:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        raise _write_error(current, error) from None
    except BaseException:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        for lock in locks:
            os.close(lock)
    return [d for d, _ in plan]


def atomic_write(destination: str | os.PathLike, write: Callable[[str], None], fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``destination``; on any failure remove it.

    ``fsync=False`` skips flushing the file to disk before the rename: still atomic for a failed or interrupted run,
    but not across a power loss; it saves the disk write time (about 2x ``torch.save``'s time for a large file).

    Raises:
        CheckpointError: The destination folder is missing or not writable, or the write failed (disk full, ...).
    """
    return atomic_write_all([(destination, write)], fsync)[0]
