"""Child processes that end with the process that started them, even when it is killed with SIGKILL.

Two mechanisms, so that one suffices: the kernel's parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``), which
holds even while a child runs C code, and a watcher thread in each child that ends it when the run's end of a pipe
closes (every platform).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signum: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent ends. Returns whether it was set (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


PARENT_CHECK = getattr(signal, "SIGUSR2", None)  # what the kernel sends the fork server when a parent thread ends


def die_with_parent_process() -> bool:
    """``die_with_parent`` for a process whose parent may run threads (the fork server). The kernel signals when the
    parent *thread* ends, although its process goes on; so the signal only makes this process check whether its
    parent process is gone. Returns whether it was set (Linux)."""
    if PARENT_CHECK is None:
        return False
    parent = os.getppid()

    def check(signum: int = 0, frame: Any = None) -> None:
        if os.getppid() != parent:  # re-parented: the run itself has ended
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        signal.signal(PARENT_CHECK, check)
    except (ValueError, OSError):
        return False
    if not die_with_parent(PARENT_CHECK):
        signal.signal(PARENT_CHECK, signal.SIG_DFL)
        return False
    check()  # the parent may have ended before the signal was asked for
    return True


def forget_parent_check() -> None:
    """In a child of the fork server: the server's handler of ``PARENT_CHECK`` is not ours to inherit."""
    if PARENT_CHECK is not None:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(PARENT_CHECK, signal.SIG_DFL)


def exit_when_closed(sentinel: Any) -> threading.Thread:
    """Start a daemon thread that SIGKILLs this process once ``sentinel`` (a pipe end or fd, such as
    ``multiprocessing.parent_process().sentinel``) becomes readable."""
    from multiprocessing.connection import wait

    def watch() -> None:
        wait([sentinel])
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="exit-when-parent-ends", daemon=True)
    thread.start()
    return thread


def in_fork_server() -> bool:
    """Whether this code runs inside ``multiprocessing``'s fork server (importing its preload modules)."""
    frame = sys._getframe()
    server = os.path.join("multiprocessing", "forkserver.py")
    while frame is not None:
        if frame.f_code.co_filename.endswith(server) and frame.f_code.co_name == "main":
            return True
        frame = frame.f_back
    return False


def release_fork_server() -> None:
    """In a child of the fork server: close our copy of its "alive" pipe, so that the server (which exits when every
    copy is closed) does not outlive the run because of us (``multiprocessing`` internals: best effort)."""
    with contextlib.suppress(AttributeError, ImportError, OSError):
        from multiprocessing import forkserver

        server = forkserver._forkserver
        fd = server._forkserver_alive_fd
        if fd is not None:
            server._forkserver_alive_fd = None
            os.close(fd)
