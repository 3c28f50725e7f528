"""Thin adapters that make focus-surgery layers first-class in other frameworks (Ultralytics YAML, ...).

``register()`` hooks every installed framework; it is idempotent. ``import focus_surgery`` calls ``auto_register()``,
which must stay cheap and must never fail the import: it hooks Ultralytics at once if ``ultralytics.nn.tasks`` is
already imported, otherwise it waits (a one-shot import hook) until Ultralytics imports it, so importing
focus-surgery never imports Ultralytics (about a second) by itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from typing import Any

_ULTRALYTICS_TASKS = "ultralytics.nn.tasks"


def register() -> dict[str, str]:
    """Register our layers with every installed framework; returns ``{framework: version}`` of what was hooked.

    Raises:
        RuntimeError: An installed Ultralytics that cannot be hooked (the message names the supported versions).
    """
    hooked: dict[str, str] = {}
    if importlib.util.find_spec("ultralytics") is not None:
        from .ultralytics import register as register_ultralytics

        hooked["ultralytics"] = register_ultralytics()
    return hooked


def _register_quietly(_module: Any = None) -> None:
    """Automatic registration: a failure becomes a warning, never an ImportError in someone else's import."""
    try:
        from .ultralytics import register as register_ultralytics

        register_ultralytics()
    except Exception as error:  # noqa: BLE001 - must not break `import ultralytics`
        warnings.warn(f"focus-surgery: Ultralytics YAML rows not registered: {error}", RuntimeWarning, stacklevel=2)


class _HookedLoader(importlib.abc.Loader):
    """Runs the real loader, then registers; everything else (get_source, ...) is the real loader's."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _register_quietly(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """One-shot finder: when ``ultralytics.nn.tasks`` is first imported, register right after it has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _ULTRALYTICS_TASKS:
            return None
        sys.meta_path[:] = [finder for finder in sys.meta_path if finder is not self]
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader)
                return spec
        return None


def auto_register() -> None:
    """Called by ``import focus_surgery``: cheap, lazy, never raises (see the module docstring)."""
    if _ULTRALYTICS_TASKS in sys.modules:
        _register_quietly()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        try:
            installed = importlib.util.find_spec("ultralytics") is not None
        except (ImportError, ValueError):
            installed = False
        if installed:
            sys.meta_path.insert(0, _RegisterAfterImport())
