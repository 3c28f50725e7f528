"""Atomic writes: nothing partial, nothing lost, nothing left behind - also after signals and SIGKILL."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from focus_surgery.atomic_io import TMP_SUFFIX, atomic_write, atomic_write_all
from focus_surgery.checkpoint_io import CheckpointError


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TMP_SUFFIX))


def test_failed_write_keeps_the_existing_destination(tmp_path):
    dst = tmp_path / "model.pt"
    dst.write_bytes(b"old")

    def fails_midway(tmp: str) -> None:
        Path(tmp).write_bytes(b"new but incomplete")
        raise RuntimeError("boom")

    with pytest.raises(CheckpointError, match="write failed"):
        atomic_write(dst, fails_midway)
    assert dst.read_bytes() == b"old" and _debris(tmp_path) == []


def test_replaced_destination_keeps_its_permissions(tmp_path):
    dst = tmp_path / "model.pt"
    dst.write_bytes(b"old")
    dst.chmod(0o600)
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert dst.read_bytes() == b"new" and (dst.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("length", [200, 247, 255])
def test_long_names(tmp_path, length):
    dst = tmp_path / ("m" * (length - 3) + ".pt")
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(b"x"))
    assert dst.read_bytes() == b"x" and _debris(tmp_path) == []


def test_non_utf8_name(tmp_path):
    dst = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.pt"))
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(b"x"))
    assert dst.read_bytes() == b"x"


def test_write_many_renames_only_after_every_write(tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "a.json"
    first.write_bytes(b"old tensors")

    def fails(tmp: str) -> None:
        raise OSError("disk gone")

    with pytest.raises(CheckpointError):
        atomic_write_all([(first, lambda tmp: Path(tmp).write_bytes(b"new")), (second, fails)])
    assert first.read_bytes() == b"old tensors" and not second.exists() and _debris(tmp_path) == []


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from focus_surgery.atomic_io import atomic_write, Interrupted
def slow(tmp):
    Path(tmp).write_bytes(b"partial")
    print("writing", flush=True)
    time.sleep(60)
try:
    atomic_write(sys.argv[1], slow)
except Interrupted:
    sys.exit(3)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_signals_leave_nothing(tmp_path, signum):
    dst = tmp_path / "out.pt"
    dst.write_bytes(b"old")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(dst)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # as at a terminal
    assert proc.stdout.readline().strip() == "writing"
    assert len(_debris(tmp_path)) == 1
    proc.send_signal(signum)
    proc.wait(300)  # generous: a loaded CI machine
    assert dst.read_bytes() == b"old"
    if signum == signal.SIGKILL:  # cannot be caught: the next write to the destination cleans up
        assert len(_debris(tmp_path)) == 1
        atomic_write(dst, lambda tmp: Path(tmp).write_bytes(b"new"))
        assert dst.read_bytes() == b"new"
    assert _debris(tmp_path) == []


def test_a_live_writers_temporary_is_not_removed(tmp_path):
    dst = tmp_path / "out.pt"
    live = tmp_path / f".out.pt.{os.getppid()}-abc{TMP_SUFFIX}"  # our parent process is alive
    live.write_bytes(b"in progress")
    atomic_write(dst, lambda tmp: Path(tmp).write_bytes(b"x"))
    assert live.exists()


def test_a_pair_is_renamed_under_the_folder_lock(tmp_path, monkeypatch):
    """The renames of a pair (``.onnx`` + ``.data``, ``.safetensors`` + ``.json``) hold an exclusive ``flock`` on the
    folder, so a concurrent run's pair cannot interleave with ours; a single file takes no lock; none is left."""
    import fcntl

    from focus_surgery import atomic_io

    seen = []
    real_replace = os.replace

    def replace(src, dst):
        probe = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(probe)  # closing drops a lock the probe itself took
        real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, "replace", replace)
    write = lambda text: lambda tmp: Path(tmp).write_text(text)  # noqa: E731
    atomic_io.atomic_write_all([(tmp_path / "m.onnx", write("graph")), (tmp_path / "m.onnx.data", write("data"))])
    assert seen == ["held", "held"]
    atomic_io.atomic_write(tmp_path / "one.pt", write("x"))
    assert seen[2:] == ["free"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "one.pt"]
