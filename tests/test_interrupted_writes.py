"""Writes that are interrupted or land on odd destinations (issue 9): nothing partial, nothing left behind.

A conversion of a large generated checkpoint is signalled while it writes (its hidden temporary file
``.<name>.*`` exists in the destination folder): after SIGINT / SIGTERM / SIGHUP the destination is absent (or the
old file there intact) and the folder holds no temporary file; a SIGKILL cannot be cleaned up by the process, so
the next conversion to the same destination must remove the stale temporary file. Plus: a replaced destination
keeps its permissions, a 247-character destination name works, and the ``.json`` beside a ``.safetensors``
output never replaces a file the run did not create.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STATE_DICT = ROOT / "checkpoints" / "focus-backbone.pt"
YOLOV5 = ROOT / "tests" / "fixtures" / "yolov5-legacy" / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt"
BIG_MB = 120  # large enough that torch.save takes a while; small enough for CI disks (input + one output)


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", YOLO_OFFLINE="1", MPLBACKEND="Agg")


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "focus_surgery", *map(str, args)], capture_output=True, cwd=ROOT, env=env(), timeout=300
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """A Focus-stem state dict padded with one large tensor to ``BIG_MB`` MB."""
    path = tmp_path_factory.mktemp("big") / "big.pt"
    state = torch.load(STATE_DICT, weights_only=True)
    state["model.9.weight"] = torch.randn(BIG_MB << 18)  # float32: BIG_MB MiB
    torch.save(state, path)
    del state
    yield path
    path.unlink(missing_ok=True)


def default_sigint() -> None:
    """A user's Ctrl-C reaches the program even when this test runs in a background job (which ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def convert_and_signal(src: Path, dst: Path, sig: int) -> tuple[subprocess.Popen, bytes, bool]:
    """Start ``convert src dst``, send ``sig`` once its temporary file appears; (process, stderr, signalled)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "focus_surgery", "convert", str(src), str(dst)],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,
    )
    signalled, deadline = False, time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if temp_files(dst.parent, dst.name):
            proc.send_signal(sig)
            signalled = True
            break
        time.sleep(0.002)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"convert did not end within 120 s of signal {sig}")
    return proc, stderr, signalled


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "old"),
    [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGHUP, False)],
    ids=["SIGINT", "SIGTERM", "SIGTERM-old-destination", "SIGHUP"],
)
def test_signal_during_write_leaves_nothing(big_checkpoint, tmp_path, sig, old):
    """SIGINT is the control (cleaned up before issue 9); SIGTERM and SIGHUP must clean up the same way."""
    dst = tmp_path / "big-conv.pt"
    if old:
        dst.write_bytes(b"the previous result")
    before = digest(big_checkpoint)
    proc, stderr, signalled = convert_and_signal(big_checkpoint, dst, sig)
    assert signalled, f"the conversion ended before its temporary file appeared: {stderr[-500:]!r}"
    assert proc.returncode != 0, "a signalled conversion must not report success"
    assert temp_files(tmp_path, dst.name) == [], f"temporary files left after {signal.Signals(sig).name}"
    if old:
        assert dst.read_bytes() == b"the previous result", "old destination changed"
    else:
        assert not dst.exists(), "partial destination written"
    assert digest(big_checkpoint) == before


@pytest.mark.slow
def test_next_write_removes_what_sigkill_left(big_checkpoint, tmp_path):
    dst = tmp_path / "big-conv.pt"
    proc, stderr, signalled = convert_and_signal(big_checkpoint, dst, signal.SIGKILL)
    assert signalled and proc.returncode == -signal.SIGKILL, stderr[-500:]
    stale = temp_files(tmp_path, dst.name)
    assert stale, "SIGKILL during the write should leave the temporary file (else this test proves nothing)"
    result = cli("convert", STATE_DICT, dst)  # the next conversion to the same destination
    assert result.returncode == 0, result.stderr
    assert temp_files(tmp_path, dst.name) == [], f"stale temporary file(s) {stale} not removed by the next write"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-conv.pt"]


def test_replaced_destination_keeps_its_permissions(tmp_path):
    dst = tmp_path / "private.pt"
    dst.write_bytes(b"old")
    dst.chmod(0o600)
    result = cli("convert", STATE_DICT, dst)
    assert result.returncode == 0, result.stderr
    assert dst.stat().st_mode & 0o777 == 0o600


def test_long_destination_name(tmp_path):
    dst = tmp_path / ("x" * 244 + ".pt")  # 247 bytes: the longest name most file systems take is 255
    result = cli("convert", STATE_DICT, dst)
    assert result.returncode == 0, result.stderr
    assert dst.is_file() and sorted(p.name for p in tmp_path.iterdir()) == [dst.name]


def test_safetensors_sidecar_never_replaces_a_file(tmp_path):
    dst = tmp_path / "model.safetensors"
    sidecar = tmp_path / "model.json"
    sidecar.write_text('{"precious": true}')
    result = cli("convert", YOLOV5, dst)
    assert sidecar.read_text() == '{"precious": true}', "an existing model.json was overwritten"
    assert result.returncode == 2 and b"model.json" in result.stderr, result.stderr
    assert len(result.stderr.decode().splitlines()) == 1 and not dst.exists()
