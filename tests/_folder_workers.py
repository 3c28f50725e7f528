"""Work functions for tests/test_folder_isolation.py, importable by the folder runner's child processes."""

import os
import signal
import time
from pathlib import Path


def write_marker(src: str, dst: str, options: dict) -> dict:
    Path(dst).write_text(Path(src).read_text())
    return {"src": src, "dst": dst}


def by_content(src: str, dst: str, options: dict) -> dict:
    """Behave as the file says: crash, hang, allocate, fail, or convert."""
    kind = Path(src).read_text().strip()
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "hang":
        time.sleep(3600)
    if kind == "memory":
        blocks = [bytearray(256 << 20) for _ in range(64)]  # 16 GiB: past any limit the test sets
        return {"allocated": len(blocks)}
    if kind.startswith("allocate "):  # "allocate N": N bytes in one block (virtual memory: what RLIMIT_AS bounds)
        block = bytearray(int(kind.split()[1]))
        return {"allocated": len(block)}
    if kind == "error":
        raise ValueError(f"{src}: not a checkpoint\nsecond line that must not be shown")
    if kind == "tempfile-then-hang":
        Path(dst).parent.joinpath(f".{Path(dst).name}.{os.getpid()}-abc.focus-surgery-tmp").write_text("partial")
        time.sleep(3600)
    return write_marker(src, dst, options)


def imports_of_a_conversion(src: str, dst: str, options: dict) -> dict:
    """Convert ``src`` as a folder run's child does and say which modules that imported (the fork server's preload
    should have imported them all, once)."""
    import sys

    from focus_surgery.folder import _convert_in_child

    before = set(sys.modules)
    report = _convert_in_child(src, dst, options)
    return {"imported": sorted(set(sys.modules) - before), "converted": report["dst"]}


def slow_to_end(src: str, dst: str, options: dict) -> dict:
    """Send the result, then hold the child's exit until the marker named by ``src``'s content exists (or forever
    if it says "never"): a child that is still ending must not stop the next file from starting."""
    import multiprocessing.util

    marker = Path(src).read_text().strip()

    def wait_for_marker() -> None:
        for _ in range(6000):  # at most ~60 s: a run that waits for this child's exit would show it as "not seen"
            if marker != "never" and Path(marker).exists():
                Path(dst).write_text("saw the next file start")
                return
            time.sleep(0.01)

    multiprocessing.util.Finalize(None, wait_for_marker, exitpriority=100)  # runs as the child ends
    return {"src": src}


def make_marker(src: str, dst: str, options: dict) -> dict:
    Path(Path(src).read_text().strip()).write_text("started")
    return {"src": src}


def gc_frozen(src: str, dst: str, options: dict) -> dict:
    import gc

    return {"frozen": gc.get_freeze_count()}


def dispatch_by_name(src: str, dst: str, options: dict) -> dict:
    """``slow_to_end`` for the file named ``one.pt``, ``make_marker`` for the others."""
    return (slow_to_end if src.endswith("one.pt") else make_marker)(src, dst, options)
