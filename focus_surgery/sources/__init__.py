"""Checkpoint sources as a registry: each says how it recognises a file, finds its stems, converts and writes it.

Adding a zoo is one module with a ``Source`` subclass plus one ``register_source`` line below. Sources are asked in
registration order; the first whose ``claims`` accepts the loaded file takes it (the plain state dict comes last).
"""

from __future__ import annotations

from .base import ConvertOptions, Source, VerificationFailed
from .loading import Loaded, load

SOURCES: list[Source] = []


def register_source(source: Source, first: bool = False) -> Source:
    """Add ``source`` (replacing one of the same name); ``first`` asks it before every other."""
    SOURCES[:] = [s for s in SOURCES if s.name != source.name]
    SOURCES.insert(0, source) if first else SOURCES.append(source)
    return source


def source_for(loaded: Loaded) -> Source:
    """The source that reads ``loaded``.

    Raises:
        CheckpointError: No source recognises it.
    """
    from ..checkpoint_io import CheckpointError

    for source in SOURCES:
        if source.claims(loaded):
            return source
    loaded.checkpoint()  # raises the loader's own refusal (a function named in the file, a class not installed)
    raise CheckpointError(f"{loaded.path}: not a checkpoint any source reads ({', '.join(s.name for s in SOURCES)})")


from .darknet import DarknetSource  # noqa: E402
from .yolov7 import Yolov7Source  # noqa: E402
from .yolov5 import Yolov5Source  # noqa: E402
from .torch_model import TorchModelSource  # noqa: E402
from .yolox import YoloxSource  # noqa: E402
from .plain import PlainStateDictSource  # noqa: E402

register_source(DarknetSource())
register_source(Yolov7Source())
register_source(Yolov5Source())
register_source(TorchModelSource())
register_source(YoloxSource())
register_source(PlainStateDictSource())

__all__ = [
    "ConvertOptions",
    "Loaded",
    "SOURCES",
    "Source",
    "VerificationFailed",
    "load",
    "register_source",
    "source_for",
]
