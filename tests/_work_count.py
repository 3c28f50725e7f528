"""Count work instead of timing it: Python bytecode instructions executed by a call (``sys.settrace`` opcode events).

A load or a check that is linear in its input executes the same number of instructions per item whatever the
machine's load; a quadratic one executes more per item as the input grows. Only code started inside the call is
counted (the frames it creates), which is all of ours: the loader's unpickler is pure Python.
"""

from __future__ import annotations

import sys
from typing import Any, Callable


def count_opcodes(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` and return how many bytecode instructions it executed (exceptions propagate)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        if event == "opcode":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return count


def per_item_growth(prepare: Callable[[int], Callable[[], Any]], n: int) -> float:
    """(work for items 2n..3n) / (work for items n..2n) of the call ``prepare(m)`` returns for m = n, 2n, 3n (only
    that call is counted, not the preparation): about 1 when the work per item is constant, 5/3 when it grows
    linearly with the input (quadratic work); the fixed cost of a call cancels."""
    c1, c2, c3 = (count_opcodes(prepare(m)) for m in (n, 2 * n, 3 * n))
    return (c3 - c2) / max(1, c2 - c1)
