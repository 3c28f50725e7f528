"""Loaded values as JSON-friendly data for reports, within a budget: a file can share one list many times over (2^40
paths in a few kilobytes), and printing it expands every path, so the expansion is counted and stopped."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .records import NamedReference

PLAIN_BUDGET = 200_000  # values one report entry may expand to (a shared sub-list counts each time it appears)


def to_plain(value: Any, budget: list[int] | None = None) -> Any:
    """A JSON-friendly copy of ``value``: numpy values and tensors become numbers / lists, other objects a tag.

    Raises:
        CheckpointError: ``value`` expands to more than ``PLAIN_BUDGET`` values, or nests too deeply.
    """
    budget = [PLAIN_BUDGET] if budget is None else budget
    try:
        return _plain(value, budget)
    except RecursionError:
        raise CheckpointError("metadata nested too deeply") from None


def _plain(value: Any, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise CheckpointError("metadata expands to more values than a checkpoint holds (shared or nested too much)")
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        size = value.numel() if isinstance(value, torch.Tensor) else int(np.size(value))
        if size > budget[0]:
            return f"<array of shape {tuple(value.shape)}>"
        budget[0] -= size
        value = value.tolist()
    if value is None or isinstance(value, (float, int, str, bool)):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, budget) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, (int, str)) else str(k): _plain(v, budget) for k, v in value.items()}
    if isinstance(value, slice):
        return {"slice": [_plain(value.start, budget), _plain(value.stop, budget), _plain(value.step, budget)]}
    if isinstance(value, NamedReference):
        return repr(value)
    return f"<{type(value).__name__}>"  # never repr() of data: it would expand what it holds
