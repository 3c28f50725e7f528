"""Ultralytics opens YOLOv5-repository checkpoints directly: ``YOLO("yolov5s.pt")`` (predict, val, train, export)
after ``import focus_surgery``, and ``focus-surgery yolo predict model=yolov5s.pt``; nothing is written.

Ultralytics' ``load_checkpoint`` (what ``YOLO(...)``, its trainer and validators call) reads every ``.pt`` through
``torch_safe_load(weight)``, looked up in ``ultralytics.nn.tasks``' globals at call time. A YOLOv5-repository file
pickles ``models.yolo.Model``, a module Ultralytics does not have, so ``torch_safe_load`` refuses it ("NOT forwards
compatible", a ``TypeError``). ``install`` wraps ``torch_safe_load`` in memory (no installed file is edited):

* a local file whose pickle names YOLOv5's classes (listed by torch without unpickling), or that Ultralytics would
  swap for its own "u" model (``yolov5s.pt`` -> ``yolov5su.pt``, read or downloaded instead), is read by our safe
  loader first: a YOLOv5 file never reaches Ultralytics' full unpickler, and the user's file is opened, not another
  model;
* every other file goes to Ultralytics' own function, with the same arguments, and what it returns is returned
  unchanged: Ultralytics' own files load exactly as before;
* only when it raises, and our safe loader (``focus_surgery.loader``, no code from the file runs) finds a YOLOv5
  ``models.yolo.Model`` in the file, the model is rebuilt in memory (``yolov5/rebuild.py``) and converted as
  ``focus-surgery convert`` converts it (Focus stem -> one 6x6 stride-2 conv), measured in float64 against the
  rebuilt original first; Ultralytics gets the checkpoint dict ``convert`` would have written (with its
  ``focus_surgery`` record of the check). Any other failure is Ultralytics' own error, unchanged.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import CheckpointError, VerificationFailed

_WRAPPED_MARK = "__focus_surgery_original__"  # the same marker as the parser's wrapper (integrations.ultralytics)


def _log(message: str) -> None:
    from ultralytics.utils import LOGGER

    LOGGER.info(message)


def _yolov5_content(path: Path, strict: bool = False) -> Any | None:
    """The file's content read by our safe loader when it holds a YOLOv5-repository model, else None.

    ``strict``: a file the safe loader refuses raises its one-line error (for a file that names YOLOv5's classes);
    else None, and Ultralytics' own error stands."""
    from ..loader import read_checkpoint

    try:
        content = read_checkpoint(path).content
    except (CheckpointError, OSError):
        if strict:
            raise
        return None
    return content if _holds_yolov5(content) else None


def _holds_yolov5(content: Any) -> bool:
    from ..yolov5.rebuild import _is_yolov5_model

    holder = {"model": content} if _is_yolov5_model(content) else content
    return isinstance(holder, dict) and any(_is_yolov5_model(holder.get(k)) for k in ("ema", "model"))


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
    from ..yolov5.convert import convert_yolov5, ultralytics_checkpoint
    from ..yolov5.rebuild import yolov5_checkpoint

    ckpt = yolov5_checkpoint(content, str(path))
    conv = convert_yolov5(ckpt, to="conv", measure=True)
    check = conv.verification
    if check is None or not check.passed:
        raise VerificationFailed(f"{path}: the in-memory conversion failed its float64 check ({check})", check)
    _log(
        f"focus-surgery: {path} is a YOLOv5-repository checkpoint (release {conv.release}); opened in memory as an "
        f"Ultralytics model ({conv.stem_before} -> {conv.stem_after}, verified in float64: "
        f"max_abs_err={check.max_abs_err:.3e}); nothing written"
    )
    return ultralytics_checkpoint(conv, "conv")


def _swapped_by_ultralytics(weight: Any) -> bool:
    """Whether Ultralytics reads another file than ``weight`` names: it renames ``yolov5s.pt`` to ``yolov5su.pt``
    (any path without a 'u') before reading, and downloads that one when it is missing."""
    from ultralytics.utils.checks import check_yolov5u_filename

    name = str(weight).strip().replace("'", "")  # as attempt_download_asset reads it
    return check_yolov5u_filename(name, verbose=False) != name


def _local_pt(weight: Any) -> Path | None:
    """The ``.pt`` file ``weight`` names, found as Ultralytics finds it (the path, else its ``weights_dir``)."""
    from ultralytics.utils import SETTINGS

    path = Path(str(weight).strip().replace("'", ""))  # as attempt_download_asset reads it
    if path.suffix.lower() != ".pt":  # Ultralytics' suffix checks lower-case it
        return None
    if path.is_file():
        return path
    found = Path(SETTINGS["weights_dir"]) / path
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
            content = _yolov5_content(path) if path is not None and not read_first else None  # read once
            if content is None:
                raise
            return open_yolov5(path, content), str(path)

    setattr(torch_safe_load, _WRAPPED_MARK, original)
    return torch_safe_load


def install(tasks: Any) -> None:
    """Wrap ``tasks.torch_safe_load`` (and ``ultralytics.nn``'s binding of it); idempotent."""
    import sys

    original = getattr(tasks, "torch_safe_load", None)
    if original is None or hasattr(original, _WRAPPED_MARK):
        return
    wrapped = _wrap(original)
    tasks.torch_safe_load = wrapped  # load_checkpoint finds it in tasks' globals at call time
    nn_package = sys.modules.get("ultralytics.nn")
    if nn_package is not None and getattr(nn_package, "torch_safe_load", None) is original:
        nn_package.torch_safe_load = wrapped


def uninstall(tasks: Any) -> None:
    """Restore Ultralytics' own ``torch_safe_load``."""
    import sys

    wrapped = getattr(tasks, "torch_safe_load", None)
    if wrapped is None or not hasattr(wrapped, _WRAPPED_MARK):
        return
    original = getattr(wrapped, _WRAPPED_MARK)
    tasks.torch_safe_load = original
    nn_package = sys.modules.get("ultralytics.nn")
    if nn_package is not None and getattr(nn_package, "torch_safe_load", None) is wrapped:
        nn_package.torch_safe_load = original
