"""One safe read of a file (``Loaded``) and, on demand, its content with layers rebuilt as live modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .allowlist import is_record_module
from .errors import CheckpointError
from .layers import materialize


@dataclass
class Checkpoint:
    """A loaded checkpoint with live modules.

    Attributes:
        path (Path): Where it came from.
        kind (str): ``"state_dict"`` (tensors only), ``"ultralytics"`` (a dict with a pickled ``model``).
        content (Any): What was loaded (a dict).
        metadata (dict): Non-tensor entries worth keeping (safetensors metadata, training info).
        globals (frozenset[str]): Every ``module.name`` the pickle named (empty for safetensors).
    """

    path: Path
    kind: str
    content: Any
    metadata: dict = field(default_factory=dict)
    globals: frozenset = frozenset()

    @property
    def model(self) -> torch.nn.Module | None:
        """The model object of a full checkpoint (EMA first, as Ultralytics does), else None."""
        models = [self.content.get(key) for key in ("ema", "model")] if isinstance(self.content, dict) else []
        return next((m for m in models if isinstance(m, torch.nn.Module)), None)

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors: the model's state dict, or the file itself for a plain state dict."""
        if self.model is not None:
            return self.model.state_dict()
        content = self.content
        if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
            content = content["state_dict"]
        return {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}


@dataclass
class Loaded:
    """A file as the safe loader read it (one read per file: every source recognises a file from this).

    Attributes:
        path (Path): The file.
        content (Any): Plain data, tensors, numpy values and ``Record`` objects.
        globals (frozenset[str]): Every ``module.name`` the pickle named.
        container (str): ``"zip"`` (torch >= 1.6), ``"legacy"`` or ``"safetensors"``.
        metadata (dict): String metadata (safetensors header), else empty.
        protocol (int): The pickle protocol of the content (``torch.save`` writes 2); written back the same.
        stats (LoadStats | None): What the read copied, mapped and checksummed (None for safetensors).
    """

    path: Path
    content: Any
    globals: frozenset = frozenset()
    container: str = "zip"
    metadata: dict = field(default_factory=dict)
    _checkpoint: Checkpoint | None = None
    protocol: int = 2
    stats: Any = None

    @property
    def names(self) -> frozenset:
        """The globals read as records (classes and functions of layer packages), not rebuilders or containers."""
        return frozenset(n for n in self.globals if is_record_module(n.rpartition(".")[0]))

    def named(self, *prefixes: str) -> bool:
        """Whether the pickle named any global starting with one of ``prefixes``."""
        return any(n.startswith(prefixes) for n in self.names)

    def checkpoint(self) -> Checkpoint:
        """The content with installed layer classes rebuilt as live modules (once; the records are consumed).

        Raises:
            CheckpointError: A record of a class that is not installed, or content that is not a checkpoint.
        """
        if self._checkpoint is None:
            try:
                content = materialize(self.content, self.path)
            except RecursionError:
                raise CheckpointError(f"{self.path}: not a torch checkpoint (nested too deeply)") from None
            checkpoint = Checkpoint(self.path, "ultralytics", content, {}, self.globals)
            if checkpoint.model is not None:
                checkpoint.metadata = {k: v for k, v in content.items() if k not in ("model", "ema", "optimizer")}
            elif isinstance(content, dict) and all(isinstance(k, str) for k in content):
                checkpoint.kind, checkpoint.metadata = "state_dict", dict(self.metadata)
            else:
                raise CheckpointError(
                    f"{self.path}: holds a {type(content).__name__}, not a state dict or a model checkpoint"
                )
            self._checkpoint = checkpoint
        return self._checkpoint
