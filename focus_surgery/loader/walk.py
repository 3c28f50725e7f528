"""Walking what a checkpoint holds: every shared object once, iteratively, with a depth bound.

A few kilobytes of pickle can describe a graph with 2^40 paths (each level holding the previous one twice) or
nesting deep enough to exhaust the C stack of code that recurses; these walks stay linear and refuse the latter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

from .records import Record

MAX_DEPTH = 200  # containers nested deeper than any checkpoint needs


def _items(obj: Any) -> list[Any] | None:
    if isinstance(obj, Record):
        return [obj.state]
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, slice):
        return [obj.start, obj.stop, obj.step]
    return None


def objects(value: Any) -> Iterator[Any]:
    """Every object under ``value`` (``value`` included), each once by identity.

    Raises:
        ValueError: Containers nested more than ``MAX_DEPTH`` levels deep.
    """
    seen: set[int] = set()
    frontier: list[tuple[Any, int]] = [(value, 0)]
    while frontier:
        obj, depth = frontier.pop()
        if id(obj) in seen:
            continue
        if depth > MAX_DEPTH:
            raise ValueError(f"containers nested more than {MAX_DEPTH} levels deep")
        seen.add(id(obj))
        yield obj
        frontier.extend((item, depth + 1) for item in _items(obj) or ())


def walk(value: Any, visit: Callable[[Any], Any]) -> None:
    """Replace each item of every list and dict (record states included) under ``value`` by ``visit(item)``."""
    for obj in objects(value):
        if isinstance(obj, dict):
            for key in list(obj):
                obj[key] = visit(obj[key])
        elif isinstance(obj, list):
            obj[:] = [visit(item) for item in obj]
