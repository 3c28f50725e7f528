"""``convert DIR OUTDIR``: every checkpoint under a folder, each in its own child process.

A file is untrusted input: one that crashes the converter, hangs past ``--timeout`` or passes the memory limit fails
alone. Each file is converted in a fresh child, forked from a server that has already imported torch, under an
address-space limit; the parent collects results, kills a child that runs too long and removes what it left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

from .atomic_io import remove_stale_temporaries, remove_stale_temporaries_in
from .errors import CheckpointError
from .limits import available_cores
from .report import EXIT_BAD_INPUT, EXIT_OK, MAX_NODES, bounded, emit, folder_lines, line, one_line
from .sources.base import TIMM_TRAIN, suffix_of

DEFAULT_TIMEOUT_S, DEFAULT_MEMORY_GB = 300.0, 8.0
CHECKPOINT_SUFFIXES = (".pt", ".pth", TIMM_TRAIN)
# what a conversion imports, imported once by the fork server; and the command line, which each child of the
# ``focus-surgery`` script runs again as its ``__main__`` (multiprocessing re-runs a script, not ``python -m``)
PRELOAD = ["focus_surgery._fork_server_preload", "focus_surgery.cli"]


@dataclass
class FileOutcome:
    """What happened to one file: ``result`` (a JSON-able report) or ``error`` (one line)."""

    src: str
    dst: str
    result: dict | None = None
    error: str | None = None


def _address_space() -> int:
    """This process's current virtual size in bytes (Linux), 0 where unknown."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        return next((int(row.split()[1]) * 1024 for row in status if row.startswith("VmSize:")), 0)
    return 0


def _child(work: Callable[[str, str, dict], dict], src: str, dst: str, options: dict, memory: int, conn) -> None:
    from .parent_death import die_with_parent, exit_when_closed, forget_parent_check, release_fork_server

    # this child ends when the run does, even after ``kill -9`` of the run (see ``parent_death``)
    release_fork_server()
    forget_parent_check()
    die_with_parent()  # our parent is the fork server, which itself dies with the run
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        exit_when_closed(parent.sentinel)
    with contextlib.suppress(ImportError, ValueError, OSError):  # no limit where the platform has none
        import resource

        limit = _address_space() + memory  # what is already mapped (torch's libraries) plus the budget
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        conn.send((work(src, dst, options), None))
    except MemoryError as error:  # a refused allocation says why; a failed one hit the limit
        limit = f"passed the memory limit of {memory / 2**30:.1f} GiB (--max-memory)"
        conn.send((None, one_line(error) if str(error) else limit))
    except BaseException as error:  # noqa: BLE001 - reported as this file's failure, in one line
        conn.send((None, one_line(error)))
    finally:
        conn.close()


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _stamps(dst: str) -> tuple:
    """What identifies the current content of ``dst`` and its ``.json``: inode and times, or None if absent."""
    stamps = []
    for path in (Path(dst), Path(dst).with_suffix(".json")):
        try:
            info = path.stat()
            stamps.append((info.st_ino, info.st_mtime_ns, info.st_ctime_ns))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


EXIT_GRACE_S = 5.0  # a child that sent its result and has not ended after this is killed


def _reap(exiting: list[tuple[Any, float]], block: bool) -> None:
    """Join the children of ``exiting`` that have ended and kill those past their kill time; with ``block``, wait
    for all of them (each at most until its kill time). Removes the joined ones from the list."""
    for process, kill_at in list(exiting):
        if block:
            process.join(max(0.0, kill_at - time.monotonic()))
        if process.is_alive() and time.monotonic() >= kill_at:
            process.kill()
            process.join()
        if not process.is_alive():
            process.join()
            exiting.remove((process, kill_at))


def convert_isolated(
    jobs: list[tuple[str, str]],
    work: Callable[[str, str, dict], dict],
    options: dict,
    workers: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = int(DEFAULT_MEMORY_GB * 2**30),
    progress: Callable[[int, int, str], None] | None = None,
) -> list[FileOutcome]:
    """Run ``work(src, dst, options)`` for each job in its own child process, ``workers`` at a time.

    Returns:
        (list[FileOutcome]): One per job, in job order.
    """
    context = _context()
    outcomes = [FileOutcome(src, dst) for src, dst in jobs]
    waiting, finished = list(range(len(jobs))), 0
    running: dict[int, tuple[Any, Connection, float]] = {}  # job index: (process, receiving end, start time)
    exiting: list[tuple[Any, float]] = []  # children that sent their result and are ending: (process, kill time)
    before: dict[int, tuple] = {}  # job index: its destinations' state when it started
    try:
        while waiting or running:
            _reap(exiting, block=len(exiting) > max(1, workers))  # at most as many ending as running
            while waiting and len(running) < max(1, workers):
                index = waiting.pop(0)
                before[index] = _stamps(jobs[index][1])
                receive, send = context.Pipe(duplex=False)
                args = (work, *jobs[index], options, memory_bytes, send)
                process = context.Process(target=_child, args=args, daemon=True)
                process.start()
                send.close()
                running[index] = (process, receive, time.monotonic())
            ready = wait([conn for _, conn, _ in running.values()] + [p.sentinel for p, _, _ in running.values()], 0.5)
            now = time.monotonic()
            for index, (process, conn, started) in list(running.items()):
                result = error = None
                if conn in ready or process.sentinel in ready:
                    try:
                        result, error = conn.recv()
                    except (EOFError, OSError):  # died without a word: a crash or the kernel's OOM killer
                        process.join(5)
                        code = process.exitcode
                        reason = signal.Signals(-code).name if code is not None and code < 0 else f"exit code {code}"
                        error = f"crashed ({reason}); the file is corrupt or hostile"
                elif now - started > timeout_s:
                    process.kill()
                    error = f"took longer than {timeout_s:g} s (--timeout); stopped"
                else:
                    continue
                conn.close()
                del running[index]
                ending = (process, now + EXIT_GRACE_S)
                if error is None:  # done and written: let it end while the next file starts (its exit takes time)
                    exiting.append(ending)
                else:  # ended before anything is removed: a temporary it still holds locked is never taken
                    _reap([ending], block=True)
                    remove_stale_temporaries(Path(jobs[index][1]))  # what a killed child may have left
                outcomes[index].result, outcomes[index].error = result, error
                finished += 1
                if progress:
                    progress(finished, len(jobs), Path(jobs[index][0]).name)
        _reap(exiting, block=True)
    except BaseException as error:  # interrupted (SIGTERM, Ctrl-C): stop the children, say exactly what was written
        _reap([(process, 0.0) for process, _ in exiting], block=True)
        for index, (process, conn, _) in running.items():
            process.kill()
            process.join()
            conn.close()
            remove_stale_temporaries(Path(jobs[index][1]))  # what it was writing (the folder's temporaries)
        done = [Path(o.dst) for o in outcomes if o.result is not None]
        done += [Path(jobs[i][1]) for i in running if _stamps(jobs[i][1]) != before[i]]  # put in place, unreported
        error.written = sorted(set(done), key=str)
        raise
    return outcomes


def progress_bar(done: int, total: int, name: str) -> None:
    name, width = line(name), 24  # file names must not drive the terminal
    filled = width * done // max(total, 1)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name[-40:]:<40}", end="", file=sys.stderr)
    if done == total:
        print(file=sys.stderr)


def _convert_in_child(src: str, dst: str, options: dict) -> dict[str, Any]:
    """One file of a folder run, inside its isolated child process: the CLI's bounds apply here too."""
    import warnings

    from . import files
    from .limits import FORWARD_LIMIT, forward_memory_limit

    args = argparse.Namespace(**options)
    if args.workers > 1:  # parallelism comes from the processes; threads inside them would only contend
        import torch

        torch.set_num_threads(1)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), forward_memory_limit(FORWARD_LIMIT):
        warnings.simplefilter("ignore")
        return files.convert_one(src, dst, args)


def convert_folder(args: argparse.Namespace) -> int:
    """``convert DIR OUTDIR``: every ``.pt`` / ``.pth`` / ``.pth.tar`` under DIR to the same relative path under
    OUTDIR, each file in its own child process (a crashing, hanging or memory-hungry file fails alone)."""
    src_dir, out_dir = Path(args.src), Path(args.dst)
    as_file = suffix_of(out_dir, CHECKPOINT_SUFFIXES) in (*CHECKPOINT_SUFFIXES, ".safetensors")
    if (out_dir.exists() and not out_dir.is_dir()) or (not out_dir.exists() and as_file):
        raise CheckpointError(
            f"{src_dir}: is a directory, not a checkpoint file "
            "(to convert every checkpoint in it, give an output folder)"
        )
    if out_dir.resolve() == src_dir.resolve():
        raise CheckpointError(f"{out_dir}: output folder must differ from the input folder")
    out = out_dir.resolve()  # every checkpoint file under src_dir, sorted, but none inside out_dir
    found = [p for p in sorted(src_dir.rglob("*")) if p.is_file() and out not in p.resolve().parents]
    found = [p for p in found if suffix_of(p, CHECKPOINT_SUFFIXES) in CHECKPOINT_SUFFIXES]
    if not found:
        raise CheckpointError(f"{src_dir}: no .pt / .pth / .pth.tar files in this folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), str(out_dir / p.relative_to(src_dir))) for p in found]
    for folder in dict.fromkeys(Path(dst).parent for _, dst in jobs):  # what killed runs left (SIGKILL, SIGQUIT)
        remove_stale_temporaries_in(folder)
    args.workers = max(1, int(getattr(args, "workers", None) or available_cores()))  # children read it
    options = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list, tuple))}
    memory = int(float(args.max_memory) * 2**30)
    outcomes = convert_isolated(
        jobs, _convert_in_child, options, args.workers, float(args.timeout), memory, progress_bar
    )
    converted = [bounded(o.result) for o in outcomes if o.result is not None]  # each file: one report's budget
    failed = [{"file": o.src, "reason": o.error} for o in outcomes if o.result is None]
    summary = {"src": str(src_dir), "dst": str(out_dir), "converted": converted, "failed": failed}
    emit(summary, args.json, folder_lines(summary), MAX_NODES * (2 + len(outcomes)))
    return EXIT_BAD_INPUT if failed else EXIT_OK
