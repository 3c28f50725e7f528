"""Thin adapters that make focus-surgery layers first-class in other frameworks (Ultralytics YAML, timm's registry).

``register()`` hooks every installed framework (idempotent). ``import focus_surgery`` calls ``auto_register()``, which
is cheap and never fails the import: it hooks a framework at once if it is already imported, else right after it is
(``import_hooks``), so importing focus-surgery never imports Ultralytics (about a second) or timm by itself.
"""

from __future__ import annotations

import importlib.util
import sys


def _register_timm() -> None:
    from .timm import register as register_timm  # imports timm

    register_timm()


def register() -> dict[str, str]:
    """Register our layers with every installed framework; returns ``{framework: version}`` of what was hooked.

    Raises:
        RuntimeError: An installed Ultralytics that cannot be hooked (the message names the supported versions).
    """
    from .ultralytics import register as register_ultralytics

    hooked: dict[str, str] = {}
    if importlib.util.find_spec("ultralytics") is not None:
        hooked["ultralytics"] = register_ultralytics()
    if importlib.util.find_spec("timm") is not None:
        _register_timm()
        hooked["timm"] = sys.modules["timm"].__version__
    return hooked


def auto_register() -> None:
    """Called by ``import focus_surgery``: cheap, lazy, never raises (see the module docstring)."""
    from ..import_hooks import call_when_imported
    from ..stems import register_focus_class, register_recogniser
    from ..surgery import register_post_apply
    from .ultralytics import register as register_ultralytics, sync_yaml, ultralytics_focus, ultralytics_focus_class

    # none of these imports Ultralytics
    register_post_apply(sync_yaml)  # Ultralytics / yolov7 rebuild a model from model.yaml to train it again
    register_recogniser(ultralytics_focus)
    register_focus_class(ultralytics_focus_class)
    call_when_imported("timm", _register_timm)  # timm models (*_s2d) once timm is imported; warns if that fails
    try:
        installed = importlib.util.find_spec("ultralytics") is not None
    except (ImportError, ValueError):  # ValueError: imports of ultralytics are blocked
        installed = False
    if installed:  # our YAML rows once Ultralytics has loaded its parser; warns if that fails
        call_when_imported("ultralytics.nn.tasks", register_ultralytics)
