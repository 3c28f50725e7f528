"""``py.typed`` promises a typed public API: every public function and method annotates its parameters and return."""

from __future__ import annotations

import inspect
from pathlib import Path

import focus_surgery as fs
from focus_surgery import model_configs


def _unannotated(name: str, fn) -> list[str]:
    sig = inspect.signature(fn)
    gaps = [
        f"{name}({p.name})"
        for p in sig.parameters.values()
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    if sig.return_annotation is inspect.Signature.empty and fn.__name__ != "__init__":
        gaps.append(f"{name} -> ?")
    return gaps


def _public_callables():
    for name in fs.__all__:
        obj = getattr(fs, name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if inspect.isfunction(member) and (attr == "__init__" or not attr.startswith("_")):
                    yield f"{name}.{attr}", member
        elif inspect.isfunction(obj):
            yield name, obj
    for name in ("config_dir", "find_config", "list_configs"):
        yield f"model_configs.{name}", getattr(model_configs, name)


def test_public_api_is_annotated():
    checked = list(_public_callables())
    assert len(checked) > 30  # the walk reached the classes' methods too
    gaps = [gap for name, fn in checked for gap in _unannotated(name, fn)]
    assert not gaps, f"unannotated in the public API: {gaps}"


def test_py_typed_marker_ships_with_the_package():
    assert (Path(fs.__file__).parent / "py.typed").is_file()
