"""What a checkpoint source is: a small adapter that declares what it accepts (the one table ``files.convert_file``
checks options against, once) and offers a few operations; ``sources.proof`` proves what it wrote."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VerificationFailed
from ..report import ConvertReport
from ..verify import DEFAULT_TOLERANCE
from .loading import Loaded

PICKLES = (".pt", ".pth")
CHECKPOINTS = (*PICKLES, ".safetensors")
TIMM_TRAIN = ".pth.tar"  # timm train.py's CheckpointSaver names its files so (a torch.save pickle, not a tar)
STATED = ("block_size", "order")  # the options a caller may state, or leave to the file's evidence
ANY_LAYOUT = ""  # an ``outputs`` key: the source writes one layout, whatever --layout says
OWN_OPTIONS = ("block_size", "order", "tolerance")  # options only some sources read (declared in ``Source.uses``)


def tensors_only(loaded: Loaded) -> bool:
    """Whether ``loaded`` holds a flat state dict and nothing else (what a ``.safetensors`` holds)."""
    content = loaded.content
    return isinstance(content, dict) and bool(content) and all(isinstance(v, torch.Tensor) for v in content.values())


def suffix_of(path: Path, known: tuple[str, ...] = ()) -> str:
    """The suffix that says what ``path`` is: the longest of ``known`` its name ends with (``.pth.tar``), else its
    last suffix, lower case."""
    name = path.name.lower()
    return max((s for s in known if name.endswith(s) and len(name) > len(s)), key=len, default=path.suffix.lower())


@dataclass
class ConvertOptions:
    """Options of ``convert_file`` (the command line's flags)."""

    to: str = "conv"  # conv | focus | s2d | fastest
    scope: str = "stem"  # stem | all
    verify: bool = False  # measure the conversion in float64 before writing (a failure writes nothing)
    block_size: int = 2  # a state dict's stem geometry (a state dict has none of its own)
    order: str = "yolov5"
    input_size: int = 640  # the shape --to fastest times
    batch: int = 1
    layout: str | None = None  # YOLOv5 files: ultralytics | yolov5; None: ultralytics where it can hold the model
    tolerance: float | None = None  # ONNX verify: max relative error; None: from the model's own error
    proof: str = "model"  # what --verify runs where a model runs: model (the whole, float64) | stem (stems only)
    stated: tuple[str, ...] = ()  # which of STATED the caller gave (set by check_options); the rest are defaults


class Source:
    """One kind of checkpoint. Subclasses set the declarations and implement the operations below."""

    name = "source"
    description = ""
    specificity = 0  # higher is asked first, ties by name: the registry's answer never depends on registration order
    targets: tuple[str, ...] = ("conv",)  # --to
    scopes: tuple[str, ...] = ("stem",)  # --scope
    outputs: dict[str, tuple[str, ...]] = {ANY_LAYOUT: CHECKPOINTS}  # --layout -> output suffixes
    reads: tuple[str, ...] = ()  # input suffixes ``read`` reads (the safe checkpoint loader reads the rest)
    uses: tuple[str, ...] = ()  # of OWN_OPTIONS: given to a source that does not read it, it is refused, not ignored
    own_proof = False  # True: ``prove_written`` runs the written file itself (its own runtime), not ``model``

    def read(self, path: Path) -> Loaded:
        """Read a file of one of the ``reads`` suffixes (the safe checkpoint loader reads every other file)."""
        raise NotImplementedError

    def claims(self, loaded: Loaded) -> bool:
        """Whether this source reads ``loaded`` (from its content, the globals it named and its metadata only)."""
        raise NotImplementedError

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        """JSON-able description with ``lines`` (the text); takes ``block_size`` / ``order`` where ``uses`` says."""
        raise NotImplementedError

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        """Find the stems, apply the change (checked in float64 with ``options.verify``), write nothing; the report's
        ``write`` writes it, ``problem`` says why the check failed. Raises CheckpointError / ConversionError."""
        raise NotImplementedError

    def geometry_from_file(self, loaded: Loaded, options: ConvertOptions) -> bool:
        """Whether the stem's block size and order come from the file rather than an assumption (else the stem
        proof is ``layout only``)."""
        return True

    def prove_written(self, loaded: Loaded, written: Loaded, report: ConvertReport, options: ConvertOptions) -> Any:
        """With ``own_proof`` (ONNX): run the written file against the original, return the measurement (``.passed``,
        ``.max_abs_err``, ``.to_dict()``); None: ``sources.proof`` decides the proof."""
        return None

    def stems(self, loaded: Loaded, options: ConvertOptions) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """Each stem as it computes, in either form, for the stem proof: ``(name, float64 module, input shape)``."""
        return []

    def held_stems(self, loaded: Loaded, stems: list, written: Loaded) -> list:
        """Of the original's ``stems`` (as ``stems`` gave them), those the file written from ``loaded`` (read back as
        ``written``) holds, each of which the stem proof runs against the written file's: all of them; a source whose
        tensors-only output holds one of several model copies says which."""
        return stems

    def written_stems(
        self, loaded: Loaded, written: Loaded, reader: Source, options: ConvertOptions
    ) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """The stems of the file written from ``loaded`` (as converted), read back as ``written``, named as ``stems``
        names the original's and computed from the tensors read back (never from memory): those its ``reader`` (the
        source that reads it) finds. A source whose tensors-only output (``.safetensors``) its reader finds no stem in
        builds them from those tensors."""
        return reader.stems(written, options)

    def model(self, loaded: Loaded) -> nn.Module | None:
        """A runnable float32 eval model for ``verify`` and the model proof; None when the file holds tensors only."""
        return None

    def state_dict(self, loaded: Loaded) -> dict:
        """The tensors ``verify`` compares when no model can be run."""
        raise NotImplementedError

    def compare_tensors(
        self, a: dict, b: dict, block_size: int = 2, order: str = "yolov5", tolerance: float = DEFAULT_TOLERANCE
    ) -> dict[str, Any]:
        """``verify`` of two state dicts of this source (the stem remapped where the forms differ)."""
        from .compare import compare_state_dicts

        return compare_state_dicts(a, b, block_size, order, tolerance)


__all__ = ["ANY_LAYOUT", "CHECKPOINTS", "OWN_OPTIONS", "PICKLES", "STATED", "TIMM_TRAIN", "ConvertOptions", "Source"]
__all__ += ["VerificationFailed", "suffix_of", "tensors_only"]
