"""Every copy of the stem's weight in a file is converted, or the conversion is refused naming the copy it left.

A training checkpoint can hold the weights more than once: the model and its EMA (``state_dict`` /
``state_dict_ema``, mmengine's ``ema_state_dict`` with ``module.`` keys, YOLOv5's ``model`` / ``ema``), and optimizer
state shaped like each weight (momentum, Adam's moments). A source converts the copies it knows and then asks
``refuse_unconverted`` about the rest of the file: a tensor anywhere else with the stem weight's old shape is a copy
that would be written in the old layout (a silent half-conversion), so the conversion stops and names it.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..errors import ConversionError
from ..loader import Record

_MAX_SHOWN = 3


def unconverted_copies(content: Any, shape: Iterable[int], skip: Iterable[Any] = ()) -> list[str]:
    """Paths (``optimizer.state.3.momentum_buffer``) of the tensors of ``shape`` under ``content``, outside the
    objects in ``skip`` (those converted, compared by identity). Each shared object is visited once."""
    shape = torch.Size(shape)
    seen = {id(obj) for obj in skip}
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("", content)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if obj.shape == shape:
                found.append(path or "<top level>")
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Record):
            items: Iterable = obj.state.items()
        elif isinstance(obj, dict):
            items = obj.items()
        elif isinstance(obj, (list, tuple)):
            items = enumerate(obj)
        else:
            continue
        children = [(f"{path}.{key}" if path else str(key), value) for key, value in items]
        stack.extend(reversed(children))
    return found


def refuse_unconverted(content: Any, shape: Iterable[int], skip: Iterable[Any] = (), what: str = "stem") -> None:
    """Raise ``ConversionError`` naming the copies of the ``what`` weight (old ``shape``) left unconverted.

    Raises:
        ConversionError: Some tensor outside ``skip`` still has the stem weight's old shape.
    """
    left = unconverted_copies(content, shape, skip)
    if left:
        shown = ", ".join(repr(p) for p in left[:_MAX_SHOWN])
        shown += f" and {len(left) - _MAX_SHOWN} more" if len(left) > _MAX_SHOWN else ""
        raise ConversionError(
            f"the file holds another copy of the {what} weight (shape {list(shape)}) that this conversion does not "
            f"convert: {shown}; writing it unconverted would leave the file half-converted (remove that entry or "
            "convert it on its own)"
        )


__all__ = ["refuse_unconverted", "unconverted_copies", "weight_permutation"]


def weight_permutation(old_shape: Iterable[int], new_shape: Iterable[int], block_size: int, order: str):
    """The map that took a stem weight of ``old_shape`` to ``new_shape`` when it is the exact permutation
    (Focus -> strided conv, or back) and so applies to its optimizer state too; else None (zero-padded kernels)."""
    from ..remap import conv_to_focus_weight, focus_to_conv_weight

    old, new = torch.Size(old_shape), torch.Size(new_shape)
    for remap in (focus_to_conv_weight, conv_to_focus_weight):
        try:
            if remap(torch.zeros(old), block_size, order).shape == new:
                return lambda w, remap=remap: remap(w, block_size, order)
        except ValueError:
            continue
    return None
