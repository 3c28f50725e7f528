"""Rebuild records of installed layer classes into real modules, from validated hyper-parameters only.

A record becomes its class through ``cls.__new__`` + ``__setstate__`` (as ``torch.load`` does), never a constructor or
a function from the file; hyper-parameters that drive loops or allocations are checked against the layer's weights
and sane ranges first, and hooks stored in a file (code, not data) are dropped.
"""

from __future__ import annotations

import importlib
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .allowlist import MODULE_PREFIXES
from .containers import budgets_for
from .errors import CheckpointError
from .records import Record
from .walk import Transform

MAX_GEOMETRY = 4096  # kernel, stride, padding, dilation, output size of one layer
MAX_SCALE = 64  # upsampling / pixel-shuffle factor
MAX_LAYERS = 1024  # stacked recurrent / transformer layers


def module_class(qualname: str, path: Path) -> type[nn.Module]:
    """The installed layer class named ``qualname``; never a function, never a class defined elsewhere."""
    module_name, _, name = qualname.rpartition(".")
    if "__main__" in module_name.split(".") or not f"{module_name}.".startswith(MODULE_PREFIXES):
        raise CheckpointError(f"{path}: refused to load: {qualname!r} is not a layer class (nothing was executed)")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{path}: needs {qualname!r}, which is not installed here") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and f"{cls.__module__}.".startswith(MODULE_PREFIXES)):
        raise CheckpointError(f"{path}: refused to load: {qualname!r} is not a layer class (nothing was executed)")
    return cls


def _numbers(value: Any) -> list[float]:
    values = value if isinstance(value, (tuple, list)) else [value]
    return [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _weight(state: dict, name: str = "weight") -> torch.Tensor | None:
    tensors = state.get("_parameters") or {}
    value = tensors.get(name) if isinstance(tensors, dict) else None
    return value if isinstance(value, torch.Tensor) else None


def check_hyperparameters(cls: type, state: dict, where: str) -> None:
    """Raise ValueError if a torch layer's hyper-parameters are out of range or disagree with its weights."""

    def bounded(attr: str, high: float, low: float = 0) -> None:
        for v in _numbers(state.get(attr)):
            if not (math.isfinite(v) and low <= v <= high):
                raise ValueError(f"{where}: {cls.__name__}.{attr} = {v} is out of range")

    for attr in ("kernel_size", "padding", "output_size", "size"):
        bounded(attr, MAX_GEOMETRY)
    for attr in ("stride", "dilation", "output_padding", "scale_factor", "upscale_factor", "downscale_factor"):
        bounded(attr, MAX_SCALE)
    if issubclass(cls, nn.modules.conv._ConvNd):
        w, groups = _weight(state), state.get("groups")
        if w is None or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{where}: {cls.__name__} without weight or groups")
        out_c, in_c = state.get("out_channels"), state.get("in_channels")
        kernel = tuple(state.get("kernel_size") or ())
        transposed = bool(state.get("transposed"))
        expected = (in_c, out_c // groups) if transposed else (out_c, in_c // groups)
        if tuple(w.shape) != (*expected, *kernel):
            raise ValueError(f"{where}: {cls.__name__} weight {tuple(w.shape)} disagrees with its settings")
    if issubclass(cls, nn.Linear):
        w = _weight(state)
        if w is None or tuple(w.shape) != (state.get("out_features"), state.get("in_features")):
            raise ValueError(f"{where}: Linear weight disagrees with its settings")
    if issubclass(cls, nn.modules.batchnorm._NormBase):
        w = _weight(state)
        if w is not None and w.shape != (state.get("num_features"),):
            raise ValueError(f"{where}: {cls.__name__} weight disagrees with num_features")
    if issubclass(cls, nn.RNNBase):
        layers, bidirectional = state.get("num_layers"), state.get("bidirectional")
        names = state.get("_flat_weights_names")
        if not isinstance(layers, int) or not 1 <= layers <= MAX_LAYERS:
            raise ValueError(f"{where}: {cls.__name__}.num_layers = {layers!r} is out of range")
        per_layer = len(names) // (layers * (2 if bidirectional else 1)) if isinstance(names, list) else 0
        misshapen = not isinstance(names, list) or per_layer not in (2, 3, 4, 5)
        if misshapen or len(names) != len(state.get("_parameters") or {}):
            raise ValueError(f"{where}: {cls.__name__} weights disagree with num_layers")
    if issubclass(cls, nn.MultiheadAttention):
        embed, heads = state.get("embed_dim"), state.get("num_heads")
        if not (isinstance(embed, int) and isinstance(heads, int) and 0 < heads <= embed and embed % heads == 0):
            raise ValueError(f"{where}: MultiheadAttention embed_dim / num_heads out of range")
        w = _weight(state, "in_proj_weight")
        if w is not None and tuple(w.shape) != (3 * embed, embed):
            raise ValueError(f"{where}: MultiheadAttention weights disagree with embed_dim")
    for attr in ("num_layers", "num_heads", "groups"):
        bounded(attr, 1 << 20)


def _without_hooks(state: dict) -> dict:
    """Every hook slot (``_forward_hooks``, ``_state_dict_pre_hooks``, ... and any later torch adds) emptied: hooks
    are functions - code, not data - whatever a file put there."""
    for slot in [key for key in state if isinstance(key, str) and key.startswith("_") and "_hooks" in key]:
        state[slot] = OrderedDict()
    return state


MAX_EXPANSION = 16  # torch's own walks (state_dict, .to, ...) follow every path; allow modest sharing (activations)


def check_module_tree(graph: dict[int, tuple[str, list[int], int]], path: Path, max_bytes: int) -> None:
    """Refuse module graphs that torch's walks (``state_dict``, ``.to``, ``.apply``: once per path to a shared layer)
    would visit exponentially or forever, or write as more tensor bytes than the file may hold: a chain of layers
    each holding the previous one twice (2^40 paths in a few KB), a layer containing itself, one large (stride-0)
    buffer written once per path. ``graph``: layer id -> (class name, sub-layer ids, its own tensors' bytes).
    """
    paths: dict[int, tuple[int, int]] = {}  # layers and tensor bytes a walk from this layer visits
    for root in graph:
        stack: list[tuple[int, bool]] = [(root, False)]
        on_stack: set[int] = set()
        while stack:
            node, done = stack.pop()
            if done:
                on_stack.discard(node)
                _, children, nbytes = graph[node]
                paths[node] = (1 + sum(paths[c][0] for c in children), nbytes + sum(paths[c][1] for c in children))
                continue
            if node in paths:
                continue
            on_stack.add(node)
            stack.append((node, True))
            for child in graph[node][1]:
                if child in on_stack:
                    raise CheckpointError(f"{path}: refused to load: a {graph[child][0]} contains itself")
                if child not in paths:
                    stack.append((child, False))
    total = max((visits for visits, _ in paths.values()), default=0)
    if total > MAX_EXPANSION * len(paths) + 1000:
        raise CheckpointError(
            f"{path}: refused to load: its {len(paths):,} layers are shared so often that torch "
            f"would visit {total:,} (a module graph built to exhaust time)"
        )
    written = max((nbytes for _, nbytes in paths.values()), default=0)
    if written > max_bytes:
        raise CheckpointError(
            f"{path}: refused to load: its shared layers' state dict holds {written:,} bytes of tensors, more than "
            f"this file can hold ({max_bytes:,})"
        )


def _tensor_bytes(state: dict) -> int:
    """Logical bytes of a layer's own parameters and buffers (what its state dict writes, views made dense)."""
    kinds = [state.get("_parameters"), state.get("_buffers")]
    tensors = [t for kind in kinds if isinstance(kind, dict) for t in kind.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def materialize(value: Any, path: Path) -> Any:
    """Turn the records under ``value`` into installed layers, each shared object once (one ``Transform``, containers
    updated in place); every layer is made, every state converted and the module graph checked before the first
    ``__setstate__`` (layers may refer to each other).

    Raises:
        CheckpointError: A record of a class that is not an installed layer, or invalid hyper-parameters.
    """
    made: list[tuple[Record, nn.Module]] = []

    def replace(obj: Any) -> Any:
        if isinstance(obj, Record):
            cls = module_class(obj.qualname, path)
            made.append((obj, cls.__new__(cls)))
            return made[-1][1]
        return obj

    transform = Transform(replace)
    result = transform(value)
    states = []
    while len(states) < len(made):  # a state may hold records not met before
        states.append(transform(made[len(states)][0].state))
    graph = {}
    for (record, module), state in zip(made, states):
        modules = state.get("_modules") if isinstance(state, dict) else None
        subs = modules.values() if isinstance(modules, dict) else ()
        graph[id(module)] = (record.qualname, [id(m) for m in subs if isinstance(m, nn.Module)], _tensor_bytes(state))
    check_module_tree(graph, path, budgets_for(path.stat().st_size).tensors.limit if path.is_file() else 1 << 62)
    for (record, module), state in reversed(list(zip(made, states))):
        try:
            check_hyperparameters(type(module), state, record.qualname)
            module.__setstate__(_without_hooks(state))
        except CheckpointError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
            detail = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise CheckpointError(f"{path}: refused to load: {detail}") from None
    return result
