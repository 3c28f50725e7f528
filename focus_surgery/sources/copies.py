"""Every copy of the stem's weight in a file (model, EMA, optimizer state) is converted, or the conversion is refused
naming the copy it left: written unconverted, it would leave a silently half-converted file."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..errors import ConversionError
from ..loader import Record

_MAX_SHOWN = 3


def refuse_unconverted(content: Any, shape: Iterable[int], skip: Iterable[Any] = (), what: str = "stem") -> None:
    """Raise naming the tensors of the ``what`` weight's old ``shape`` under ``content`` (``optimizer.state.3.
    momentum_buffer``), outside the objects in ``skip`` (those converted, by identity); shared objects seen once.

    Raises:
        ConversionError: Some tensor outside ``skip`` still has the stem weight's old shape.
    """
    shape = torch.Size(shape)
    seen = {id(obj) for obj in skip}
    left: list[str] = []
    stack: list[tuple[str, Any]] = [("", content)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if obj.shape == shape:
                left.append(path or "<top level>")
            continue
        if id(obj) in seen or not isinstance(obj, (Record, dict, list, tuple)):
            continue
        seen.add(id(obj))
        items = obj.state if isinstance(obj, Record) else obj
        items = items.items() if isinstance(items, dict) else enumerate(items)
        stack.extend(reversed([(f"{path}.{key}" if path else str(key), value) for key, value in items]))
    if left:
        shown = ", ".join(repr(p) for p in left[:_MAX_SHOWN])
        shown += f" and {len(left) - _MAX_SHOWN} more" if len(left) > _MAX_SHOWN else ""
        raise ConversionError(
            f"the file holds another copy of the {what} weight (shape {list(shape)}) that this conversion does not "
            f"convert: {shown}; writing it unconverted would leave the file half-converted (remove that entry or "
            "convert it on its own)"
        )


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


__all__ = ["refuse_unconverted", "weight_permutation"]
