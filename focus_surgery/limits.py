"""Bounded forward passes for models read from files, whose hyper-parameters (upsampling factors, attention sizes)
the file chose: inside ``forward_memory_limit(n)``, each operation of a checked forward is first run on the meta
device (shapes only), and ``AllocationRefused`` stops one whose output would exceed ``n`` bytes.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

FORWARD_LIMIT = 1 << 30  # bytes one operation of a verification forward of a model from a file may allocate
_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("focus_surgery_forward_limit", default=None)


class AllocationRefused(MemoryError):
    """One operation of a forward pass would allocate more than the limit."""


@contextlib.contextmanager
def forward_memory_limit(max_bytes: int | None) -> Iterator[None]:
    """Within this block, forwards run by ``verify`` refuse any single output larger than ``max_bytes``."""
    token = _LIMIT.set(max_bytes)
    try:
        yield
    finally:
        _LIMIT.reset(token)


def current_limit() -> int | None:
    return _LIMIT.get()


def check_allocation(shape: Any, dtype: torch.dtype, what: str) -> None:
    """Refuse, before it is allocated, a tensor of ``shape`` (sized by numbers in a file) larger than the current
    ``forward_memory_limit`` (nothing is checked without one).

    Raises:
        AllocationRefused: The tensor would exceed the limit, or ``shape`` is not a list of non-negative integers.
    """
    limit = _LIMIT.get()
    if limit is None:
        return
    dims = list(shape)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in dims):
        raise AllocationRefused(f"{what}: {str(dims)[:80]} is not a shape (non-negative integers)")
    nbytes = torch.empty((), dtype=dtype).element_size()
    for n in dims:  # stepwise, so that a product of huge numbers stops as soon as it is too large
        nbytes *= n
        if nbytes > limit and 0 not in dims:
            shown = "x".join(str(d) if d < 10**9 else f"~1e{len(str(d)) - 1}" for d in dims)
            raise AllocationRefused(
                f"{what} of shape {shown} ({str(dtype).replace('torch.', '')}) would need more than "
                f"{limit / 2**30:.1f} GiB (the per-operation limit); the sizes the file gives are not plausible"
            )


def _to_meta(value: Any) -> Any:
    return value.to("meta") if isinstance(value, torch.Tensor) else value


class _CheckedOps(TorchDispatchMode):
    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes = max_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        meta_kwargs = tree_map(_to_meta, kwargs)
        if not any(isinstance(v, torch.Tensor) for v in flat) and "device" in kwargs:
            meta_kwargs["device"] = torch.device("meta")  # a factory (zeros, arange, ...): size it without memory
        try:
            shapes = func(*tree_map(_to_meta, args), **meta_kwargs)
        except Exception:  # noqa: BLE001 - data-dependent ops have no meta kernel; their outputs follow their inputs
            shapes = None
        nbytes = sum(t.numel() * t.element_size() for t in tree_flatten(shapes)[0] if isinstance(t, torch.Tensor))
        if nbytes > self.max_bytes:
            limit = self.max_bytes / 2**30
            raise AllocationRefused(
                f"{func.__name__} would allocate {nbytes / 2**30:.1f} GiB (limit {limit:.1f} GiB); "
                "the model's hyper-parameters are not plausible"
            )
        return func(*args, **kwargs)


@contextlib.contextmanager
def checked_forward() -> Iterator[None]:
    """Apply the current ``forward_memory_limit`` (if any) to the torch operations inside this block."""
    limit = _LIMIT.get()
    with _CheckedOps(limit) if limit is not None else contextlib.nullcontext():
        yield


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where there is one): a folder run's ``--workers``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
