"""Timing and peak-memory primitives shared by ``optimize`` and the benchmark.

Candidates are measured side by side: each round runs every candidate once, in a fresh random order, so slow drifts
of a shared machine hit every candidate alike. Medians over the rounds are reported, never means.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import sys
import time
from typing import Callable, Iterator

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (a no-op on the CPU), so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    candidates: dict[str, Callable[[], object]], device: torch.device, repeats: int = 10, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds per call of each candidate (name -> zero-argument call), one per round of ``repeats`` interleaved
    rounds, after ``warmup`` rounds that are discarded (allocator, cuDNN / oneDNN kernel choice)."""
    order = list(candidates)
    shuffle = random.Random(0)
    for _ in range(warmup):
        for name in order:
            candidates[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(repeats):
        shuffle.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            candidates[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C++ log lines written straight to file descriptor 2 (the profiler's start/stop chatter)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # pytest capture or an unusual stderr: nothing to redirect
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def peak_memory_bytes(call: Callable[[], object], device: torch.device) -> int:
    """Peak bytes that torch allocated above the starting level during one ``call()``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak. CPU: the profiler's allocation events
    (``profile_memory=True``), summed in time order; this counts exactly what torch's CPU allocator handed out,
    like the CUDA number, unlike process RSS which glibc's caching and other threads blur.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    level = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if str(event.device_type()).endswith("CPU"):
            level += event.nbytes()
            peak = max(peak, level)
    return int(peak)


def matmul_reference(flops: float, device: torch.device, dtype: torch.dtype = torch.float32):
    """A square matmul with (about) ``flops`` floating-point operations: (zero-argument call, its exact FLOPs).

    What the device achieves on its best-optimised kernel: the yardstick for a stem's GFLOP/s.
    """
    n = max(16, round((flops / 2) ** (1 / 3)))
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=generator, dtype=dtype).to(device)
    b = torch.rand(n, n, generator=generator, dtype=dtype).to(device)
    return (lambda: torch.mm(a, b)), 2.0 * n**3
