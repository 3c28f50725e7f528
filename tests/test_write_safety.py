"""Writes and processes (issue 25.5), each through the real CLI in its own process under a time limit:

- ``kill -9`` of a folder run's parent ends its fork server and the running child too;
- the temporary file a SIGKILL leaves is removed by the next run writing into that folder, whatever it writes; a live
  run's temporary file (its lock held) is never removed;
- a destination that is a device or a FIFO is refused in one line and stays what it was (never replaced, never
  opened: a FIFO would block);
- a ``.safetensors`` + ``.json`` pair whose halves come from two conversions is refused when read;
- a folder run stopped by SIGTERM says which files it wrote (not "nothing was written").
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _bounded_cli import ROOT, _environment, run_fresh
from focus_surgery.atomic_io import TMP_SUFFIX, atomic_write

STATE_DICT = ROOT / "checkpoints" / "focus-backbone.pt"
YOLOV5 = ROOT / "tests" / "fixtures" / "yolov5-legacy" / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt"
BIG_MB = 120  # torch.save of it takes long enough to be caught writing


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.pt"
    state = torch.load(STATE_DICT, weights_only=True)
    state["model.9.weight"] = torch.randn(BIG_MB << 18)
    torch.save(state, path)
    del state
    yield path
    path.unlink(missing_ok=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TMP_SUFFIX))


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, grandchildren...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def start_folder_run(src: Path, dst: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "focus_surgery", "convert", str(src), str(dst)],
        cwd=ROOT,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(condition, proc: subprocess.Popen, limit: float = 240.0) -> bool:
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_folder_run_ends_its_children_and_the_next_run_removes_the_debris(big_checkpoint, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    os.link(big_checkpoint, src / "big.pt")
    proc = start_folder_run(src, out)
    try:
        caught = wait_for(lambda: out.is_dir() and temporaries(out), proc)
        assert caught, f"the child never started writing: {proc.stderr.read()[-500:]!r}"
        children = descendants(proc.pid)
        assert children, "the folder run has no child processes"
        proc.kill()
        proc.wait(300)
        deadline = time.monotonic() + 300
        while any(running(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [p for p in children if running(p)]
    finally:
        proc.kill()
        proc.wait(300)
    for pid in alive:  # do not leak them into the rest of the session
        os.kill(pid, signal.SIGKILL)
    assert alive == [], f"{len(alive)} process(es) of the killed folder run still running"
    assert not (out / "big.pt").exists(), "the child went on and wrote its output after the run was killed"
    stale = temporaries(out)
    assert stale, "the SIGKILL should have left the child's temporary file (else this test proves nothing)"
    result = run_fresh("convert", STATE_DICT, out / "other.pt")  # another destination in the same folder
    assert result.returncode == 0, str(result)
    assert temporaries(out) == [], f"stale temporary file(s) {stale} not removed by the next run in the folder"
    assert sorted(p.name for p in out.iterdir()) == ["other.pt"]


def test_a_temporary_whose_lock_is_held_is_never_removed(tmp_path):
    """A writer whose pid looks dead (another pid namespace) but still holds its lock keeps its file."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    locked = tmp_path / f".a.pt.{gone.pid}-0123456789ab{TMP_SUFFIX}"
    abandoned = tmp_path / f".b.pt.{gone.pid}-ba9876543210{TMP_SUFFIX}"
    locked.write_bytes(b"live")
    abandoned.write_bytes(b"left by a SIGKILL")
    fifo = tmp_path / f".c.pt.{gone.pid}-000000000000{TMP_SUFFIX}"
    os.mkfifo(fifo)  # our name, not our kind of file: never opened, never removed
    with open(locked, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        atomic_write(tmp_path / "other.pt", lambda tmp: Path(tmp).write_bytes(b"x"))
        assert locked.exists() and not abandoned.exists() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


_SLOW_WRITER = """
import resource, signal, sys, time
from pathlib import Path
from focus_surgery.atomic_io import atomic_write
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGQUIT dumps core by default: not into the repository
signal.signal(signal.SIGQUIT, signal.SIG_DFL)  # a shell's background job inherits SIGQUIT ignored
def slow(tmp):
    Path(tmp).write_bytes(b"partial")
    print("writing", flush=True)
    time.sleep(600)
atomic_write(sys.argv[1], slow)
"""


@pytest.mark.parametrize("signum", [signal.SIGQUIT, signal.SIGKILL])
def test_what_sigquit_and_sigkill_leave_is_removed_by_a_write_to_another_name(tmp_path, signum):
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(tmp_path / "first.pt")],
        cwd=tmp_path,
        env=_environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signum)
        proc.wait(300)
    finally:
        proc.kill()
        proc.wait(300)
    assert proc.returncode == -signum
    assert len(temporaries(tmp_path)) == 1, "the signal should leave the temporary file (else this proves nothing)"
    atomic_write(tmp_path / "second.pt", lambda tmp: Path(tmp).write_bytes(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["second.pt"]


def _special_destinations(tmp_path: Path) -> list[tuple[Path, str]]:
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    null = tmp_path / "null.pt"
    null.symlink_to(os.devnull)  # /dev/null under a checkpoint name (as root: the device node itself)
    return [(fifo, "fifo"), (null, "character device")]


def test_devices_and_fifos_are_never_replaced(cli, tmp_path):
    before = digest(STATE_DICT)
    for dst, kind in _special_destinations(tmp_path):
        mode = os.stat(dst).st_mode
        outcome = cli.run("convert", STATE_DICT, dst)
        assert outcome.returncode == 2 and not outcome.timed_out, str(outcome)
        assert len(outcome.stderr_lines) == 1 and kind in outcome.stderr_lines[0], str(outcome)
        assert os.stat(dst).st_mode == mode, f"{dst.name} was replaced"
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert temporaries(tmp_path) == [] and digest(STATE_DICT) == before


def _device_node(path: Path) -> Path:
    """A character device like /dev/null (1, 3) at ``path``: what ``/dev/null`` is to a run as root, but private."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError, OSError):
        pytest.skip("creating a device node needs root (CAP_MKNOD)")
    return path


def test_a_device_node_is_never_replaced(cli, tmp_path):
    """``convert m.onnx /dev/null`` as root replaced the device node (issue 25); here a private one."""
    from test_onnx_graph import export

    src = export("pixel_unshuffle", tmp_path / "stem.onnx")
    before = digest(src)
    for source, dst in ((src, _device_node(tmp_path / "null.onnx")), (STATE_DICT, _device_node(tmp_path / "null.pt"))):
        outcome = cli.run("convert", source, dst)
        assert outcome.returncode == 2 and len(outcome.stderr_lines) == 1, str(outcome)
        assert "character device" in outcome.stderr_lines[0], str(outcome)
        assert stat.S_ISCHR(os.lstat(dst).st_mode), f"{dst.name} was replaced"
    assert temporaries(tmp_path) == [] and digest(src) == before


def test_a_fifo_beside_a_safetensors_output_is_refused_not_opened(cli, tmp_path):
    """The ``.json`` of a YOLOv5 ``.safetensors`` output is a FIFO: reading it to see whether it is ours would block."""
    os.mkfifo(tmp_path / "m.json")
    outcome = cli.run("convert", YOLOV5, tmp_path / "m.safetensors", limit=120)
    assert not outcome.timed_out and outcome.returncode == 2, str(outcome)
    assert len(outcome.stderr_lines) == 1, str(outcome)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"] and stat.S_ISFIFO(
        os.stat(tmp_path / "m.json").st_mode
    )


def test_a_mismatched_safetensors_json_pair_is_refused(cli, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pair, other = tmp_path / "a" / "m.safetensors", tmp_path / "b" / "m.safetensors"
    assert cli.run("convert", YOLOV5, pair).returncode == 0
    assert cli.run("convert", YOLOV5, other, "--to", "focus").returncode == 0
    good = cli.run("verify", pair, YOLOV5)
    assert good.returncode == 0, str(good)  # the control: a pair from one conversion
    # what two concurrent converts to one name can leave: the tensors of one, the JSON of the other
    pair.with_suffix(".json").write_bytes(other.with_suffix(".json").read_bytes())
    before = digest(pair)
    outcome = cli.run("verify", pair, YOLOV5)
    assert outcome.returncode == 2, str(outcome)
    assert len(outcome.stderr_lines) == 1 and "does not match m.json" in outcome.stderr_lines[0], str(outcome)
    assert digest(pair) == before


def test_sigterm_of_a_folder_run_says_what_was_written(big_checkpoint, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    os.link(STATE_DICT, src / "a.pt")  # converted first (sorted), quickly
    os.link(big_checkpoint, src / "b.pt")
    proc = start_folder_run(src, out)
    try:
        caught = wait_for(lambda: (out / "a.pt").exists() and temporaries(out), proc)
        assert caught, f"the run never reached b.pt: {proc.stderr.read()[-500:]!r}"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait(300)
    text = stderr.decode()
    lines = text[text.rfind("focus-surgery:") :].splitlines()  # after the progress bar's last \r
    assert proc.returncode == 2 and len(lines) == 1, text
    assert "nothing was written" not in lines[0] and "1 file written" in lines[0] and "a.pt" in lines[0], lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["a.pt"], "b.pt or a temporary file left behind"
