"""What a checkpoint source is: a small adapter that declares what it accepts and offers a few operations.

Declared (the one table ``files.convert_file`` checks options against, once): ``targets`` (``--to``), ``scopes``,
``outputs`` (layout -> output suffixes), ``specificity`` (higher is asked first; ties by name, so the registry's
answer never depends on registration order), ``reads`` (input suffixes read by the adapter itself) and ``uses`` (the
further ``ConvertOptions`` it reads: ``block_size``, ``order``, ``tolerance``; one it does not read is refused when
given). Offered:
``claims``, ``inspect``, ``convert`` (find the stems, apply the change, check it in float64; nothing written),
``model`` (a runnable model for ``verify`` and the model proof), ``stems`` (the stems alone, for the stem proof),
``state_dict`` / ``compare_tensors`` (when nothing can be run). ``sources.proof`` decides and measures the proof.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import VerificationFailed
from ..report import ConvertReport
from ..verify import DEFAULT_TOLERANCE
from .loading import Loaded

PICKLES = (".pt", ".pth")
CHECKPOINTS = (*PICKLES, ".safetensors")
TIMM_TRAIN = ".pth.tar"  # timm train.py's CheckpointSaver names its files so (a torch.save pickle, not a tar)
STATED = ("block_size", "order")  # the options a caller may state, or leave to the file's evidence


def suffix_of(path: Path, known: tuple[str, ...] = ()) -> str:
    """The suffix that says what ``path`` is: the longest of ``known`` its name ends with (``.pth.tar``), else its
    last suffix, lower case."""
    name = path.name.lower()
    return max((s for s in known if name.endswith(s) and len(name) > len(s)), key=len, default=path.suffix.lower())


ANY_LAYOUT = ""  # an ``outputs`` key: the source writes one layout, whatever --layout says
OWN_OPTIONS = ("block_size", "order", "tolerance")  # options only some sources read (declared in ``Source.uses``)


@dataclass
class ConvertOptions:
    """Options of ``convert_file`` (the command line's flags).

    Attributes:
        to (str): ``conv`` | ``focus`` | ``s2d`` | ``fastest``.
        scope (str): ``stem`` | ``all``.
        verify (bool): Measure the conversion in float64 before writing (a failure writes nothing).
        block_size (int), order (str): A state dict's stem geometry (a state dict has none of its own).
        input_size (int), batch (int): The shape ``--to fastest`` times.
        layout (str | None): YOLOv5-repository files: ``ultralytics`` or ``yolov5`` (the repository's own layout);
            None (default): ``ultralytics`` where an Ultralytics model can hold the file's model, else ``yolov5`` (a
            fork's layers or head), and the report says why.
        tolerance (float | None): ONNX ``verify``: max relative error; None derives it from the model's own error.
        proof (str): What ``verify`` runs where the file holds a runnable model: ``model`` (default: the written
            file's whole model against the original's, in float64) or ``stem`` (each stem of the written file against
            the original's in float64 and every tensor compared bit for bit; the model's code not run).
        stated (tuple[str]): Which of ``block_size`` / ``order`` the caller gave: a file that names its architecture
            fixes them, and a stated value that contradicts it is refused.
    """

    to: str = "conv"
    scope: str = "stem"
    verify: bool = False
    block_size: int = 2
    order: str = "yolov5"
    input_size: int = 640
    batch: int = 1
    layout: str | None = None
    tolerance: float | None = None
    proof: str = "model"
    stated: tuple[str, ...] = ()  # of STATED: given by the caller (set by ``check_options``); the rest are defaults


class Source:
    """One kind of checkpoint. Subclasses set the declarations and implement the operations below."""

    name = "source"
    description = ""
    specificity = 0
    targets: tuple[str, ...] = ("conv",)
    scopes: tuple[str, ...] = ("stem",)
    outputs: dict[str, tuple[str, ...]] = {ANY_LAYOUT: CHECKPOINTS}
    reads: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()  # of OWN_OPTIONS: given to a source that does not read it, it is refused, not ignored
    own_proof = False  # True: ``prove_written`` runs the written file itself (its own runtime), not ``model``

    def read(self, path: Path) -> Loaded:
        """Read a file of one of the ``reads`` suffixes (the safe checkpoint loader reads every other file)."""
        raise NotImplementedError

    def claims(self, loaded: Loaded) -> bool:
        """Whether this source reads ``loaded`` (from its content and the globals it named only)."""
        raise NotImplementedError

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        """JSON-able description; ``lines`` holds the human-readable text. A source that ``uses`` ``block_size`` /
        ``order`` takes them as keywords (the stem geometry a state dict does not hold)."""
        raise NotImplementedError

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        """Find the stems, apply the change, check it in float64 when ``options.verify``; write nothing.

        Returns:
            (ConvertReport): With ``write`` set; ``problem`` says why the check failed (then nothing is written).

        Raises:
            CheckpointError / ConversionError: Bad input, or nothing to convert.
        """
        raise NotImplementedError

    def geometry_from_file(self, loaded: Loaded, options: ConvertOptions) -> bool:
        """Whether the stem's block size and order come from the file (its classes, its family, its named
        architecture) rather than from an assumption: a stem proof, else ``layout only``."""
        return True

    def prove_written(self, loaded: Loaded, written: Loaded, report: ConvertReport, options: ConvertOptions) -> Any:
        """A source with its own runtime (``own_proof``: ONNX) runs the written file against the original here and
        returns the measurement (``.passed``, ``.max_abs_err``, ``.to_dict()``); None: ``sources.proof`` decides the
        proof."""
        return None

    def stems(self, loaded: Loaded, options: ConvertOptions) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """Each stem of the file as it computes, for the stem proof when no model can be run: ``(name, float64
        module, input shape)``; the original's and the written file's stems of one name are run on the same input.
        Finds the stem in either form (the original's and the converted one)."""
        return []

    def model(self, loaded: Loaded) -> nn.Module | None:
        """A runnable float32 eval model for ``verify`` and the model proof, or None when the file holds tensors only
        (may be ``loaded``'s own objects, changed to float32 in place: each proof reads its file on its own)."""
        return None

    def state_dict(self, loaded: Loaded) -> dict:
        """The tensors ``verify`` compares when no model can be run."""
        raise NotImplementedError

    def compare_tensors(
        self, a: dict, b: dict, block_size: int = 2, order: str = "yolov5", tolerance: float = DEFAULT_TOLERANCE
    ) -> dict[str, Any]:
        """``verify`` of two state dicts of this source (the stem remapped where the forms differ, with the block
        size and order given where the file holds none)."""
        from .compare import compare_state_dicts

        return compare_state_dicts(a, b, block_size, order, tolerance)


__all__ = ["ANY_LAYOUT", "CHECKPOINTS", "OWN_OPTIONS", "PICKLES", "STATED", "TIMM_TRAIN", "ConvertOptions", "Source"]
__all__ += ["VerificationFailed", "suffix_of"]
