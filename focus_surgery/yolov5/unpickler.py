"""YOLOv5-repository checkpoints read as records: a thin view of ``focus_surgery.loader`` (kept for callers)."""

from __future__ import annotations

import os
from typing import Any

from ..loader import Record, read_checkpoint, record_class

LegacyRecord = Record  # the name this module used before the loader moved to the bottom of the package

__all__ = ["LegacyRecord", "load_legacy_pickle", "load_records", "record_class"]


def load_records(path: str | os.PathLike, *unused: Any, **unused_kw: Any) -> Any:
    """The content of a ``torch.save`` file as plain data and records (``loader.read_checkpoint``)."""
    return read_checkpoint(path).content


def load_legacy_pickle(path: str | os.PathLike) -> Any:
    """Read a YOLOv5-repository checkpoint into plain data and records; no code from it runs."""
    return read_checkpoint(path).content
