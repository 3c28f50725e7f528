"""Run a callback right after a module is first imported, so optional integrations cost nothing until used:
``call_when_imported("timm", register)`` calls ``register`` now if timm is imported, else once its import finished.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from typing import Callable


class _PostImportLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the callbacks."""

    def __init__(self, loader: importlib.abc.Loader, callbacks: list[Callable[[], None]]):
        self.loader = loader
        self.callbacks = callbacks

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _run(module.__name__, self.callbacks)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)  # get_resource_reader, get_source, ...: the real loader's


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader the other finders return for the watched names."""

    def __init__(self):
        self.callbacks: dict[str, list[Callable[[], None]]] = {}
        self._searching: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.callbacks or fullname in self._searching:
            return None
        self._searching.add(fullname)  # find_spec below walks sys.meta_path again, including us
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._searching.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _PostImportLoader(spec.loader, self.callbacks.pop(fullname))
        return spec


_FINDER = _PostImportFinder()


def _run(name: str, callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception as error:  # an optional integration must never break the user's import
            warnings.warn(f"focus_surgery: {name} integration not registered: {error}", stacklevel=3)


def call_when_imported(name: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` now if module ``name`` is imported, else right after it is (once)."""
    if sys.modules.get(name) is not None:  # None: imports of ``name`` are blocked
        _run(name, [callback])
        return
    _FINDER.callbacks.setdefault(name, []).append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
