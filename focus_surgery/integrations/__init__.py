"""Thin adapters that make focus-surgery layers first-class in other frameworks (Ultralytics YAML, ...).

``register()`` hooks every installed framework; it is idempotent. ``import focus_surgery`` calls ``auto_register()``,
which must stay cheap and must never fail the import: it hooks Ultralytics at once if ``ultralytics.nn.tasks`` is
already imported, otherwise it waits (a one-shot import hook) until Ultralytics imports it, so importing
focus-surgery never imports Ultralytics (about a second) by itself.
"""

from __future__ import annotations

import importlib.util
import sys

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
    if importlib.util.find_spec("timm") is not None:
        from .timm import register as register_timm

        register_timm()
        hooked["timm"] = sys.modules["timm"].__version__
    return hooked


def _register_ultralytics() -> None:
    from .ultralytics import register as register_ultralytics

    register_ultralytics()


def _register_timm() -> None:
    from .timm import register as register_timm

    register_timm()


def auto_register() -> None:
    """Called by ``import focus_surgery``: cheap, lazy, never raises (see the module docstring)."""
    from ..stems import register_focus_class, register_recogniser
    from ..surgery import register_post_apply
    from ..import_hooks import call_when_imported
    from .ultralytics import sync_yaml, ultralytics_focus, ultralytics_focus_class  # none imports Ultralytics

    register_post_apply(sync_yaml)  # Ultralytics / yolov7 rebuild a model from model.yaml to train it again
    register_recogniser(ultralytics_focus)
    register_focus_class(ultralytics_focus_class)

    call_when_imported("timm", _register_timm)  # timm models (*_s2d) once timm is imported; warns if that fails
    try:
        installed = importlib.util.find_spec("ultralytics") is not None
    except (ImportError, ValueError):  # ValueError: imports of ultralytics are blocked
        installed = False
    if installed:  # our YAML rows once Ultralytics has loaded its parser; warns if that fails
        call_when_imported(_ULTRALYTICS_TASKS, _register_ultralytics)
