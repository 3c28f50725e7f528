"""What a checkpoint source is: how it recognises a file, finds its stems, converts it and writes the result back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .loading import Loaded


@dataclass
class ConvertOptions:
    """Options of ``convert_file`` (the command line's flags).

    Attributes:
        to (str): ``conv`` | ``focus`` | ``s2d`` | ``fastest``.
        scope (str): ``stem`` | ``all``.
        verify (bool): Measure the conversion in float64 before writing (a failure writes nothing).
        block_size (int), order (str): A state dict's stem geometry (a state dict has none of its own).
        input_size (int), batch (int): The shape ``--to fastest`` times.
        layout (str): YOLOv5-repository files: ``ultralytics`` (default) or ``yolov5`` (the repository's own layout).
    """

    to: str = "conv"
    scope: str = "stem"
    verify: bool = False
    block_size: int = 2
    order: str = "yolov5"
    input_size: int = 640
    batch: int = 1
    layout: str = "ultralytics"


class Source:
    """One kind of checkpoint. Subclasses set ``name`` and ``description`` and implement the methods below."""

    name = "source"
    description = ""

    def claims(self, loaded: Loaded) -> bool:
        """Whether this source reads ``loaded`` (from its content and the globals it named only)."""
        raise NotImplementedError

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        """JSON-able description; ``lines`` holds the human-readable text."""
        raise NotImplementedError

    def convert(self, loaded: Loaded, dst: Path, options: ConvertOptions) -> dict[str, Any]:
        """Convert and write ``dst`` atomically (nothing written on failure); the JSON-able report.

        Raises:
            CheckpointError / ConversionError / ValueError: bad input. VerificationFailed: the check failed.
        """
        raise NotImplementedError

    def model(self, loaded: Loaded) -> nn.Module | None:
        """A runnable float32 eval model for ``verify``, or None when the file holds tensors only."""
        return None

    def state_dict(self, loaded: Loaded) -> dict:
        """The tensors ``verify`` compares when no model can be run."""
        raise NotImplementedError

    def compare_tensors(self, a: dict, b: dict) -> dict[str, Any]:
        """``verify`` of two state dicts of this source (the stem remapped where the forms differ)."""
        from .compare import compare_state_dicts

        return compare_state_dicts(a, b)


class VerificationFailed(Exception):
    """The float64 check of a conversion or of ``verify`` did not pass (exit code 1)."""
