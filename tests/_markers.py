"""Marker files that hostile payloads would create. Payloads the tests write name a path under ``tmp_path``; the one
committed fixture whose payload names a fixed path (``malicious_reduce.pt``: ``touch /tmp/PWNED_focus_surgery``) is
checked by the marker's state before and after, so a leftover marker from elsewhere neither fails nor hides a run."""

from __future__ import annotations

from pathlib import Path

FIXED_PAYLOAD_MARKER = Path("/tmp/PWNED_focus_surgery")  # baked into tests/fixtures/yolov5-legacy/malicious_reduce.pt


def marker_state(path: Path = FIXED_PAYLOAD_MARKER) -> tuple[int, int] | None:
    """(inode, mtime in ns) of ``path``, None when it does not exist: a ``touch`` changes it either way."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns
