"""Sizes an architecture asks for, checked against the tensors in the file before anything is built.

A head reading ``ch = 2**24`` channels or a leaf ``Conv2d(2**24, ...)`` costs gigabytes to build from a few bytes of
a ``.pt``'s records or a ``.json``: every layer with parameters must have exactly the shapes of the weights it will
receive, and the head's levels must be well-formed, or the file is refused before the build.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..loader import CheckpointError

MAX_LEVELS = 16  # detection levels of a head (YOLOv5 has 3 or 4)


def _shape(tensor: Any) -> str:
    return str(tuple(tensor.shape)) if isinstance(tensor, torch.Tensor) else "missing"


def check_sizes(
    arch: Any, weights: dict[str, torch.Tensor], source: str, make_leaf: Callable[[dict], torch.nn.Module]
) -> None:
    """Refuse a ``LegacyArchitecture`` whose head or leaf layers do not fit ``weights``.

    The head's ``ch``, ``stride`` and ``anchors`` have one entry per level, each ``ch`` the input channels of its
    output conv, strides positive and finite; every leaf built by ``make_leaf`` on the meta device (no memory; passed
    in by ``rebuild``, which imports this module) has the shapes of the file's tensors of the same names.
    """
    if not isinstance(arch.detect, dict) or not isinstance(arch.leaves, dict):
        raise CheckpointError(f"{source}: the architecture's head or layers are malformed")
    head_index = len(arch.yaml["backbone"]) + len(arch.yaml["head"])
    ch, stride, anchors = arch.detect.get("ch"), arch.detect.get("stride"), arch.detect.get("anchors")
    levels = len(ch) if isinstance(ch, list) else -1
    ok = 0 < levels <= MAX_LEVELS and isinstance(stride, list) and isinstance(anchors, list)
    if not (ok and len(stride) == len(anchors) == levels):
        raise CheckpointError(f"{source}: the head's ch / stride / anchors do not give one entry per level (1-16)")
    for i, (c, s) in enumerate(zip(ch, stride)):
        weight = weights.get(f"model.{head_index}.m.{i}.weight")
        if not isinstance(c, int) or isinstance(c, bool) or weight is None or weight.ndim != 4 or weight.shape[1] != c:
            raise CheckpointError(
                f"{source}: head level {i} reads ch={str(c)[:20]} channels; its weight "
                f"model.{head_index}.m.{i}.weight has shape {_shape(weight)}"
            )
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s > 0):
            raise CheckpointError(f"{source}: head level {i} has stride {str(s)[:20]}, not a positive number")
    for path, spec in arch.leaves.items():
        with torch.device("meta"):
            module = make_leaf(spec)
        for name, tensor in module.state_dict().items():
            found = weights.get(f"{path}.{name}")
            if found is None or tuple(found.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{source}: layer {path} ({spec.get('type')}) has a {name} of shape {tuple(tensor.shape)}; "
                    f"the file's {path}.{name} is {_shape(found)}"
                )
