"""Atomic writes: a temporary file of ours in the destination folder, renamed into place when complete.

A failed or interrupted write never leaves a partial destination and never touches an existing one:

* any exception, Ctrl-C, SIGTERM or SIGHUP (see ``cleanup_on_signals``) removes the temporary file;
* a SIGKILL cannot be caught: the temporary file it leaves is named ``.<name>.<pid>.focus-surgery-tmp``, and the
  next write to the same destination removes those whose process is gone;
* a replaced destination keeps its permission bits; names up to the file system's limit work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
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
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(destination: Path) -> list[Path]:
    """Remove temporary files of earlier writes to ``destination`` whose process no longer runs (a SIGKILL)."""
    prefix, removed = _tmp_prefix(destination), []
    folder = destination.parent
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX)):
                continue
            pid_text = entry.name[len(prefix) : -len(TMP_SUFFIX)].partition("-")[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and not _alive(int(pid_text)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


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


def _check_destination(destination: Path) -> Path:
    folder = destination.parent if str(destination.parent) else Path(".")
    if destination.is_dir():
        raise CheckpointError(f"{destination}: is a directory; give a file name to write")
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


def _new_temporary(destination: Path, folder: Path) -> Path:
    tmp = folder / f"{_tmp_prefix(destination)}{os.getpid()}-{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return tmp


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
    current = plan[0][0]
    try:
        with cleanup_on_signals():
            for (destination, write), folder in zip(plan, folders):
                current = destination
                remove_stale_temporaries(destination)
                temporaries.append(_new_temporary(destination, folder))
                write(str(temporaries[-1]))
                os.chmod(temporaries[-1], _final_mode(destination))  # after the write: a 0444 mode still writes
                if fsync:
                    with open(temporaries[-1], "rb") as done:
                        os.fsync(done.fileno())
            for (destination, _), tmp in zip(plan, temporaries):
                os.replace(tmp, destination)
    except (OSError, RuntimeError) as error:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        raise _write_error(current, error) from None
    except BaseException:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
        raise
    return [d for d, _ in plan]


def atomic_write(destination: str | os.PathLike, write: Callable[[str], None], fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``destination``; on any failure remove it.

    ``fsync=False`` skips flushing the file to disk before the rename: still atomic for a failed or interrupted run,
    but not across a power loss; it saves the disk write time (about 2x ``torch.save``'s time for a large file).

    Raises:
        CheckpointError: The destination folder is missing or not writable, or the write failed (disk full, ...).
    """
    return atomic_write_all([(destination, write)], fsync)[0]
