"""Child processes that end with the process that started them, even when it is killed with SIGKILL.

A folder run converts each file in a child forked from a fork server (``folder.py``). ``kill -9`` of the run gives
nobody a chance to clean up, and the fork server and a child working on a hostile file used to live on. Two
mechanisms, so that one suffices:

* the kernel's parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``): each child gets SIGKILL when the fork server
  ends, so the chain holds even while a child runs C code that never lets Python in; the fork server gets a signal
  that makes it check whether the run has ended (``die_with_parent_process``: the kernel also sends it when only the
  run's thread that started the server ends, and a worker thread's end must not kill the other threads' jobs);
* a watcher thread in each child that ends it as soon as the run's end of a pipe closes (every platform).
"""

from __future__ import annotations

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
    """``die_with_parent`` for a process whose parent may run threads (the fork server: any thread of the run may
    start it). The kernel sends the parent-death signal when the parent *thread* ends, although the process and its
    other threads go on; so the signal only makes this process check whether its parent process is gone.

    Returns:
        (bool): Whether it was set (Linux).
    """
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
        try:
            signal.signal(PARENT_CHECK, signal.SIG_DFL)
        except (ValueError, OSError):
            pass


def exit_when_closed(sentinel: Any) -> threading.Thread:
    """Start a daemon thread that SIGKILLs this process once ``sentinel`` (a pipe end or fd) becomes readable.

    ``multiprocessing.parent_process().sentinel`` is such a pipe: the parent holds its other end until it ends.
    """
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
    """In a child of the fork server: close our copy of the server's "alive" pipe, so that the server (which exits
    when every copy is closed) does not outlive the run because of us. Private to ``multiprocessing``: best effort."""
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver
        fd = server._forkserver_alive_fd
        if fd is not None:
            server._forkserver_alive_fd = None
            os.close(fd)
    except (AttributeError, ImportError, OSError):
        pass
