"""Review of the write and process safety of issue 25 (atomic writes, stale temporaries, parent death, pair digests).

Each test is a reproducer of one way a run could delete what is not its own, fail because of a file it does not
own, or kill work it should not: in a subprocess (the real CLI where the CLI is concerned) with a generous timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _bounded_cli import ROOT, _environment, run_fresh
from focus_surgery import atomic_io
from focus_surgery.atomic_io import TMP_SUFFIX, atomic_write

STATE_DICT = ROOT / "checkpoints" / "focus-backbone.pt"
YOLOV5 = ROOT / "tests" / "fixtures" / "yolov5-legacy" / "yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt"


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def lock_is_free(path: str) -> bool:
    """Whether another process can take ``path``'s flock right now (what a cleaner in another pid namespace sees)."""
    code = (
        "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)"
    )
    return subprocess.run([sys.executable, "-c", code, path], capture_output=True, timeout=300).returncode == 0


# ------------------------------------------------------------------------------------------------ stale temporaries


def test_a_temporary_name_with_an_impossible_pid_neither_blocks_writes_nor_is_removed(tmp_path):
    """``.x.<20 digits>-abc.focus-surgery-tmp`` in a folder made every write into it fail (OverflowError in
    ``os.kill``): one file named like ours must not take the folder from every later run. No process ever had
    that pid, so it was not written by a run of ours: it is left alone."""
    odd = tmp_path / f".x.{'9' * 20}-abc{TMP_SUFFIX}"
    odd.write_bytes(b"someone's file")
    result = run_fresh("convert", STATE_DICT, tmp_path / "out.pt")
    assert result.returncode == 0, str(result)
    assert odd.read_bytes() == b"someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([odd.name, "out.pt"])


def test_links_and_folders_named_like_a_dead_runs_temporary_are_never_followed_or_removed(tmp_path):
    pid = dead_pid()
    target = tmp_path / "precious.pt"
    target.write_bytes(b"keep")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inside.pt").write_bytes(b"keep too")
    link = tmp_path / f".a.pt.{pid}-0123456789ab{TMP_SUFFIX}"
    link.symlink_to(target)
    dir_link = tmp_path / f".b.pt.{pid}-0123456789ab{TMP_SUFFIX}"
    dir_link.symlink_to(folder)
    as_dir = tmp_path / f".c.pt.{pid}-0123456789ab{TMP_SUFFIX}"
    as_dir.mkdir()
    (as_dir / "x").write_bytes(b"x")
    live = tmp_path / f".d.pt.{os.getppid()}-0123456789ab{TMP_SUFFIX}"  # a live process's name
    live.write_bytes(b"live")
    atomic_write(tmp_path / "out.pt", lambda tmp: Path(tmp).write_bytes(b"new"))
    assert link.is_symlink() and dir_link.is_symlink() and (as_dir / "x").exists() and live.exists()
    assert target.read_bytes() == b"keep" and (folder / "inside.pt").read_bytes() == b"keep too"
    assert (tmp_path / "out.pt").read_bytes() == b"new"


def test_a_temporary_is_locked_for_the_whole_write_even_if_a_cleaner_won_the_race_at_its_creation(
    tmp_path, monkeypatch
):
    """Between ``open(O_CREAT)`` and ``flock`` a run in another pid namespace (our pid is dead to it) may take the
    new file's lock and remove it. The writer then wrote to a new, unlocked file of the same name: removable by the
    next such cleaner in the middle of the write. The temporary must be ours, and locked, until it is renamed."""
    real_lock = atomic_io._lock
    raced = []

    def lock_after_a_foreign_cleaner(fd: int) -> bool:
        if not raced:  # the first temporary: another namespace's cleaner takes its lock and removes it first
            raced.append(True)
            (name,) = [p for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)]
            code = (
                "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nos.unlink(sys.argv[1])"
            )
            subprocess.run([sys.executable, "-c", code, str(name)], check=True, timeout=300)
        return real_lock(fd)

    monkeypatch.setattr(atomic_io, "_lock", lock_after_a_foreign_cleaner)
    seen = []

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"content")
        seen.append(lock_is_free(tmp))

    atomic_write(tmp_path / "out.pt", write)
    assert raced and seen == [False], "the temporary was written unlocked: another run's cleaner could remove it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]


_CONCURRENT_WRITER = """
import sys
from pathlib import Path
from focus_surgery.atomic_io import atomic_write
folder, tag, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count):
    atomic_write(folder / f"{tag}-{i % 5}.pt", lambda tmp: Path(tmp).write_bytes(f"{tag}{i}".encode() * 1000), False)
print("done")
"""


def test_two_runs_writing_into_one_folder_both_succeed_and_never_remove_each_others_files(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_WRITER, str(tmp_path), tag, "150"],
            env=_environment(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{t}-{i}.pt" for t in "ab" for i in range(5)), names
    assert (tmp_path / "a-4.pt").read_bytes() == b"a149" * 1000 and (tmp_path / "b-4.pt").read_bytes() == b"b149" * 1000


# ------------------------------------------------------------------------------------------------ parent death

_THREADS = """
import sys, threading, time
from pathlib import Path
from focus_surgery.folder import convert_isolated

def work(src, dst, options):
    Path(dst).write_text("started")
    time.sleep(float(src))
    return {"slept": src}

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    results = {}
    def run(name, seconds):
        results[name] = convert_isolated([(seconds, str(folder / name))], work, {})[0]
    first = threading.Thread(target=run, args=("first", "3"))
    first.start()  # starts the fork server from this thread
    while not (folder / "first").exists():
        time.sleep(0.01)
    second = threading.Thread(target=run, args=("second", "15"))
    second.start()  # its child comes from the same fork server
    while not (folder / "second").exists():
        time.sleep(0.01)
    first.join()  # the thread that started the fork server ends; the process, and the second job, go on
    second.join()
    for name in ("first", "second"):
        print(name, results[name].result, results[name].error)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal")
def test_the_end_of_the_thread_that_started_the_fork_server_kills_no_job(tmp_path):
    """``PR_SET_PDEATHSIG`` fires when the parent *thread* ends: a fork server started by ``convert_isolated`` in a
    worker thread died with that thread, and took every other thread's running job with it (SIGKILL)."""
    script = tmp_path / "threads.py"
    script.write_text(_THREADS)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=_environment(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["first {'slept': '3'} None", "second {'slept': '15'} None"], proc.stdout


# ------------------------------------------------------------------------------------------------ pair digests


@pytest.fixture(scope="module")
def pair(cli, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pair") / "m.safetensors"
    outcome = cli.run("convert", YOLOV5, path, limit=300)
    assert outcome.returncode == 0, str(outcome)
    return path


def _copy_pair(pair: Path, folder: Path, edit=None) -> Path:
    folder.mkdir()
    copy = folder / pair.name
    copy.write_bytes(pair.read_bytes())
    config = json.loads(pair.with_suffix(".json").read_text())
    if edit:
        edit(config)
    copy.with_suffix(".json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("command", ["inspect", "verify", "convert"])
def test_a_digest_on_one_side_only_is_refused(cli, pair, tmp_path, command):
    """The JSON of a pair written before digests, beside tensors that record one: ``verify`` refused it, but
    ``inspect`` called it a focus-surgery pair and ``convert`` converted it (exit 0) without looking at the JSON."""
    copy = _copy_pair(pair, tmp_path / "one-side", lambda config: config.pop("tensors_sha256"))
    before = copy.read_bytes()
    args = {
        "inspect": ("inspect", copy),
        "verify": ("verify", copy, YOLOV5),
        "convert": ("convert", copy, tmp_path / "out.safetensors", "--to", "focus"),
    }[command]
    outcome = cli.run(*args, limit=300)
    assert outcome.returncode == 2 and len(outcome.stderr_lines) == 1, str(outcome)
    assert "does not match m.json" in outcome.stderr_lines[0], str(outcome)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-side"] and copy.read_bytes() == before


def test_a_pair_from_one_conversion_still_inspects_and_converts(cli, pair, tmp_path):
    """The control of the test above; and a ``.safetensors`` without its JSON still converts its stem."""
    assert cli.run("inspect", pair, limit=300).returncode == 0
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes(pair.read_bytes())
    for src in (pair, alone):
        outcome = cli.run("convert", src, tmp_path / f"out-{src.stem}.safetensors", "--to", "focus", limit=300)
        assert outcome.returncode == 0, str(outcome)


def test_a_digest_of_other_tensors_in_both_halves_is_refused(cli, pair, tmp_path):
    """The JSON names the right digest but the tensors were changed (same names, dtypes, shapes and order)."""
    from safetensors.torch import load_file, save_file

    copy = _copy_pair(pair, tmp_path / "changed")
    tensors = load_file(copy)
    from safetensors import safe_open

    with safe_open(copy, "pt") as f:
        metadata = f.metadata()
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[name] = tensors[name].flip(0).contiguous()
    save_file(tensors, copy, metadata=metadata)
    outcome = cli.run("verify", copy, YOLOV5, limit=300)
    assert outcome.returncode == 2 and "does not match m.json" in outcome.stderr_lines[-1], str(outcome)


def _process_group(pgid: int) -> list[int]:
    """Every live (not zombie) process of the process group ``pgid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_folder_run_with_workers_leaves_no_process_in_its_group(tmp_path):
    """Scan the run's whole process group (not the descendants seen before the kill): nothing of it survives."""

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(8):
        os.link(YOLOV5, src / f"m{i}.pt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "focus_surgery", "convert", str(src), str(out), "--workers", "2"],
        cwd=ROOT,
        env=_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(_process_group(proc.pid)) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the run, its fork server and two children
        assert len(_process_group(proc.pid)) >= 4, "the children never started"
        proc.kill()
        proc.wait(300)
        deadline = time.monotonic() + 120
        while _process_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _process_group(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
    assert left == [], f"process(es) {left} of the killed run still running"
