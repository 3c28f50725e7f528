"""A signal that lands between creating a scratch file and listing it for clean-up leaves nothing behind.

The CI run that found this (test_signal_during_write_leaves_nothing[SIGINT]) hit the window by chance under load;
here the signal is raised inside the window itself, so the test fails every time without the fix.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import pytest

from focus_surgery import atomic_io
from focus_surgery.sources import proof


def _interrupt_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt here even when the suite runs in a background job (which ignores SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigint_right_after_the_temporary_is_created_removes_it(tmp_path, monkeypatch):
    real_lock = atomic_io._lock
    created = []

    def lock_then_interrupt(fd: int) -> bool:
        created.append(fd)
        _interrupt_self()  # the temporary exists, the writer has not listed it yet
        return real_lock(fd)

    monkeypatch.setattr(atomic_io, "_lock", lock_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_io.atomic_write(tmp_path / "out.pt", lambda tmp: Path(tmp).write_bytes(b"data"))
    assert created, "the window was never entered (this test would prove nothing)"
    assert list(tmp_path.iterdir()) == []


def test_sigint_right_after_the_proof_folder_is_made_removes_it(tmp_path, monkeypatch):
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp_then_interrupt(*args, **kwargs) -> str:
        folder = real_mkdtemp(*args, **{**kwargs, "dir": tmp_path})
        made.append(Path(folder))
        _interrupt_self()  # the folder exists, read_back has not listed it yet
        return folder

    written = tmp_path / "written.tmp"
    written.write_bytes(b"data")
    monkeypatch.setattr(proof.tempfile, "mkdtemp", mkdtemp_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with proof.read_back([(tmp_path / "out.pt", written)]):
            pass
    assert made, "the window was never entered (this test would prove nothing)"
    assert not any(folder.exists() for folder in made)
