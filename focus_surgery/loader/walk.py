"""The one traversal of what a checkpoint holds: every shared object once (a few KB of pickle can describe 2^40
paths), iteratively, with a depth bound (nesting that would exhaust the C stack of recursive code is refused)."""

from __future__ import annotations

from typing import Any, Callable

from .records import Record

MAX_DEPTH = 200  # containers nested deeper than any checkpoint needs
_PLAIN = {str, bytes, int, float, bool, type(None)}  # never replaced, never entered: skipped (most of a pickle)


def _items(obj: Any) -> tuple | list | None:
    if isinstance(obj, Record):
        return (obj.state,)
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    if type(obj) is slice:
        return (obj.start, obj.stop, obj.step)
    return None


class Transform:
    """``replace`` applied to every object under a value, each shared object once (memoised by identity).

    ``replace(obj)`` returns ``obj`` to keep it (containers are then entered) or its replacement (not entered); plain
    values are kept without asking. Lists, dicts and record states are updated in place; tuples, slices and sets are
    rebuilt when an item changed. Calling one ``Transform`` on several values reuses what it already did.

    Raises:
        ValueError: Containers nested more than ``MAX_DEPTH`` levels deep, or a tuple (set, slice) that holds
            itself through a list or dict and has items to replace: the copy cannot be put where the tuple was met
            inside itself, and the original would keep what had to be replaced.
    """

    def __init__(self, replace: Callable[[Any], Any]):
        self.replace = replace
        self.done: dict[int, tuple[Any, Any]] = {}  # id: (original kept alive so ids stay unique, result)
        self._open: set[int] = set()  # immutable containers entered, not yet rebuilt (on the current path)
        self._met_open: set[int] = set()  # ... of which a container inside them holds them (a cycle)

    def __call__(self, value: Any) -> Any:
        if type(value) in _PLAIN:
            return value
        done, stack = self.done, [(value, 0, False)]
        while stack:
            obj, depth, entered = stack.pop()
            if entered:
                self._rebuild(obj)
                continue
            if id(obj) in done:
                continue
            if depth > MAX_DEPTH:
                raise ValueError(f"containers nested more than {MAX_DEPTH} levels deep")
            new = self.replace(obj)
            done[id(obj)] = (obj, new)  # provisional for containers: a cycle resolves to the container itself
            items = _items(obj) if new is obj else None
            if items:
                if not isinstance(obj, (Record, dict, list)):
                    self._open.add(id(obj))
                stack.append((obj, depth, True))
                stack.extend((item, depth + 1, False) for item in items if type(item) not in _PLAIN)
        return done[id(value)][1]

    def _rebuild(self, obj: Any) -> None:
        done = self.done

        def get(item: Any) -> Any:
            if id(item) in self._open:
                self._met_open.add(id(item))
            entry = done.get(id(item))
            return item if entry is None else entry[1]

        if isinstance(obj, Record):
            obj.state = get(obj.state)
        elif isinstance(obj, dict):
            for key, item in obj.items():
                if get(item) is not item:
                    obj[key] = get(item)
        elif isinstance(obj, list):
            obj[:] = map(get, obj)
        else:
            items = _items(obj)
            new = [get(item) for item in items]
            self._open.discard(id(obj))
            if any(a is not b for a, b in zip(new, items)):
                if id(obj) in self._met_open:
                    raise ValueError(f"a {type(obj).__name__} that contains itself holds values to convert")
                done[id(obj)] = (obj, slice(*new) if type(obj) is slice else type(obj)(new))
