"""Checkpoint sources: a registry of adapters (``base.Source``), asked most specific first, ties by name, so the
answer never depends on the order of registration. Adding a family is one module plus one ``register_source`` line.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError, VerificationFailed
from .base import ConvertOptions, Source
from .loading import Loaded, load as load_checkpoint_file

SOURCES: list[Source] = []


def register_source(source: Source) -> Source:
    """Add ``source`` (replacing one of the same name); asked by ``specificity``, highest first, then by name."""
    others = [s for s in SOURCES if s.name != source.name]
    SOURCES[:] = sorted([*others, source], key=lambda s: (-s.specificity, s.name))
    return source


def load(path: str | os.PathLike, mode: str = "mmap") -> Loaded:
    """Read ``path`` once, safely: by the source that declares its suffix, else by the safe checkpoint loader (in
    loader mode ``mode``); raises CheckpointError (one line naming the file) for a missing, empty, corrupt,
    truncated or hostile file."""
    reader = next((s for s in SOURCES if Path(path).suffix.lower() in s.reads), None)
    return reader.read(Path(path)) if reader is not None else load_checkpoint_file(path, mode)


def source_for(loaded: Loaded) -> Source:
    """The source that reads ``loaded``, the most specific first; raises CheckpointError when none does."""
    source = next((s for s in SOURCES if s.claims(loaded)), None)
    if source is not None:
        return source
    loaded.checkpoint()  # raises the loader's own refusal (a function named in the file, a class not installed)
    raise CheckpointError(f"{loaded.path}: not a checkpoint any source reads ({', '.join(s.name for s in SOURCES)})")


from .darknet import DarknetSource  # noqa: E402
from .mmengine import MmengineSource  # noqa: E402
from .onnx import OnnxSource  # noqa: E402
from .plain import PlainStateDictSource  # noqa: E402
from .torch_model import TorchModelSource  # noqa: E402
from .yolov5 import Yolov5PairSource, Yolov5Source  # noqa: E402
from .yolov7 import Yolov7Source  # noqa: E402
from .yolox import YoloxSource  # noqa: E402

register_source(DarknetSource())
register_source(MmengineSource())
register_source(OnnxSource())
register_source(PlainStateDictSource())
register_source(TorchModelSource())
register_source(Yolov5PairSource())
register_source(Yolov5Source())
register_source(Yolov7Source())
register_source(YoloxSource())

__all__ = ["ConvertOptions", "Loaded", "SOURCES", "Source", "VerificationFailed", "load", "register_source"]
__all__ += ["source_for"]
