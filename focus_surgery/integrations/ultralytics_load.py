"""``YOLO("yolov5s.pt")`` and ``focus-surgery yolo ...`` open YOLOv5-repository checkpoints; nothing is written.

Ultralytics reads every ``.pt`` through ``torch_safe_load`` (looked up in ``ultralytics.nn.tasks`` at call time), which
refuses YOLOv5's ``models.yolo.Model`` ("NOT forwards compatible"). ``register()`` wraps it with ``_wrap``: a local file
whose pickle names YOLOv5's classes, one torch cannot list, or one Ultralytics would swap for its "u" model
(``yolov5s.pt`` -> ``yolov5su.pt``) is read by our safe loader first (no code from the file runs, and the user's file is
opened, not another); every other file goes to Ultralytics' own function and comes back unchanged, unless that raises
and our loader finds a YOLOv5 model in it. A YOLOv5 model is rebuilt in memory, converted as ``focus-surgery convert``
converts it and checked in float64; Ultralytics gets the checkpoint dict ``convert`` would have written.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError, VerificationFailed

_WRAPPED_MARK = "__focus_surgery_original__"  # on each wrapper Ultralytics is given: the function it wraps


def _yolov5_content(path: Path, strict: bool = False) -> Any | None:
    """The file's content read by our safe loader when it holds a YOLOv5-repository model, else None.

    ``strict``: a file the safe loader refuses raises its one-line error (for a file that names YOLOv5's classes);
    else None, and Ultralytics' own error stands."""
    from ..loader import read_checkpoint
    from ..yolov5.rebuild import _is_yolov5_model

    try:
        content = read_checkpoint(path).content
    except (CheckpointError, OSError):
        if strict:
            raise
        return None
    holder = {"model": content} if _is_yolov5_model(content) else content
    holds = isinstance(holder, dict) and any(_is_yolov5_model(holder.get(k)) for k in ("ema", "model"))
    return content if holds else None


def open_yolov5(path: str | os.PathLike, content: Any) -> dict[str, Any]:
    """The Ultralytics checkpoint dict of a YOLOv5-repository file's content, converted and checked in memory.

    Returns:
        (dict): What ``focus-surgery convert`` writes for it (``model`` / ``ema``, ``train_args``, ...), with the
        float64 check under ``ckpt["focus_surgery"]``.

    Raises:
        CheckpointError: A model an Ultralytics model cannot hold (a fork's layers or head: the message says how to
            convert it instead), or an unreadable architecture.
        VerificationFailed: The float64 check failed.
    """
    from ultralytics.utils import LOGGER

    from ..yolov5.convert import convert_yolov5, ultralytics_checkpoint
    from ..yolov5.rebuild import yolov5_checkpoint

    conv = convert_yolov5(yolov5_checkpoint(content, str(path)), to="conv", measure=True)
    check = conv.verification
    if check is None or not check.passed:
        raise VerificationFailed(f"{path}: the in-memory conversion failed its float64 check ({check})", check)
    LOGGER.info(
        f"focus-surgery: {path} is a YOLOv5-repository checkpoint (release {conv.release}); opened in memory as an "
        f"Ultralytics model ({conv.stem_before} -> {conv.stem_after}, verified in float64: "
        f"max_abs_err={check.max_abs_err:.3e}); nothing written"
    )
    return ultralytics_checkpoint(conv, "conv")


def _swapped_by_ultralytics(weight: Any) -> bool:
    """Whether Ultralytics reads another file than ``weight`` names (``yolov5s.pt`` -> ``yolov5su.pt``, downloaded
    when missing)."""
    from ultralytics.utils.checks import check_yolov5u_filename

    name = str(weight).strip().replace("'", "")  # as attempt_download_asset reads it
    return check_yolov5u_filename(name, verbose=False) != name


def _local_pt(weight: Any) -> Path | None:
    """The ``.pt`` file ``weight`` names, found as Ultralytics finds it (the path, else its ``weights_dir``)."""
    from ultralytics.utils import SETTINGS

    path = Path(str(weight).strip().replace("'", ""))  # as attempt_download_asset reads it
    if path.suffix.lower() != ".pt":  # Ultralytics' suffix checks lower-case it
        return None
    found = path if path.is_file() else Path(SETTINGS["weights_dir"]) / path
    return found if found.is_file() else None


def _yolov5_names(path: Path) -> bool | None:
    """Whether the pickle names YOLOv5's classes (``models.*``) and none of Ultralytics' own, listed by torch without
    unpickling it; None when torch cannot list them (not a zip checkpoint)."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a legacy or unreadable file: our safe loader decides
        return None
    return any(n.startswith("models.") for n in names) and not any(n.startswith("ultralytics.") for n in names)


def _wrap(original: Callable) -> Callable:
    """``torch_safe_load`` that opens YOLOv5-repository files (see the module docstring); each file read once."""

    @functools.wraps(original)
    def torch_safe_load(weight, *args, **kwargs):
        path = _local_pt(weight)
        names_yolov5 = _yolov5_names(path) if path is not None else False
        # read by us first: a file naming YOLOv5's classes (never handed to Ultralytics' full unpickler, which runs
        # what a pickle names), a legacy file torch cannot list, and the user's file Ultralytics would swap for 'u'
        read_first = path is not None and (names_yolov5 is not False or _swapped_by_ultralytics(weight))
        if read_first:
            content = _yolov5_content(path, strict=bool(names_yolov5))
            if content is not None:
                return open_yolov5(path, content), str(path)
        try:
            return original(weight, *args, **kwargs)
        except Exception:  # noqa: BLE001 - re-raised unchanged unless the file is a YOLOv5 one
            content = _yolov5_content(path) if path is not None and not read_first else None
            if content is None:
                raise
            return open_yolov5(path, content), str(path)

    return torch_safe_load
