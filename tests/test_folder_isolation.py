"""Folder conversion isolates each file: a crash, a hang or a memory blow-up fails that file alone."""

from pathlib import Path

import torch

from focus_surgery.folder import convert_isolated
from tests._folder_workers import by_content


def _jobs(tmp_path: Path, kinds: list[str]) -> list[tuple[str, str]]:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    jobs = []
    for i, kind in enumerate(kinds):
        src = tmp_path / "in" / f"{i}-{kind}.pt"
        src.write_text(kind)
        jobs.append((str(src), str(tmp_path / "out" / src.name)))
    return jobs


def test_crash_memory_and_errors_fail_alone(tmp_path):
    kinds = ["ok", "segfault", "ok", "memory", "error", "ok"]
    jobs = _jobs(tmp_path, kinds)
    outcomes = convert_isolated(jobs, by_content, {}, workers=2, memory_bytes=1 << 30)  # the default timeout (300 s)
    by_kind = dict(zip(kinds, outcomes))
    for outcome, kind in zip(outcomes, kinds):
        if kind == "ok":
            assert outcome.error is None and Path(outcome.dst).read_text() == "ok"
    assert "crashed (SIGSEGV)" in by_kind["segfault"].error
    assert "memory limit" in by_kind["memory"].error
    assert by_kind["error"].error.endswith("not a checkpoint") and "\n" not in by_kind["error"].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0-ok.pt", "2-ok.pt", "5-ok.pt"]  # no debris


def test_hangs_are_stopped_at_the_timeout(tmp_path):
    """Only files that never finish run under the short timeout, so no machine load can make a good file time out;
    nothing measures the run's wall clock (the hangs sleep an hour: the run ends only if they are stopped)."""
    kinds = ["hang", "tempfile-then-hang", "hang"]
    outcomes = convert_isolated(_jobs(tmp_path, kinds), by_content, {}, workers=2, timeout_s=2)
    assert all("longer than 2 s" in o.error and o.result is None for o in outcomes), outcomes
    assert list((tmp_path / "out").iterdir()) == []  # the temporary file of the stopped child is removed


def test_results_come_back_in_job_order(tmp_path):
    jobs = _jobs(tmp_path, ["ok"] * 5)
    outcomes = convert_isolated(jobs, by_content, {}, workers=3)
    assert [o.src for o in outcomes] == [src for src, _ in jobs]
    assert all(o.result == {"src": o.src, "dst": o.dst} for o in outcomes)


def test_a_child_imports_nothing_the_fork_server_did_not(tmp_path):
    """Imports are paid once per run, in the fork server, not once per file: converting a YOLOv5-repository file
    and a plain state dict in a child imports none of ours or Ultralytics' (~1.4 s of imports per file before)."""
    from focus_surgery.speed.bench import make_yolov5x_size_state_dict
    from tests._folder_workers import imports_of_a_conversion

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "out").mkdir()
    torch.save(make_yolov5x_size_state_dict(20_000), tmp_path / "sd.pt")
    sources = [root / "tests/fixtures/yolov5-legacy/yolov5s-v4.0-d0.33-w0.125-nc3-seed103-fp16.pt", tmp_path / "sd.pt"]
    jobs = [(str(src), str(tmp_path / "out" / f"{i}.pt")) for i, src in enumerate(sources)]
    outcomes = convert_isolated(jobs, imports_of_a_conversion, {"workers": 1, "to": "conv"}, workers=1)
    for outcome in outcomes:
        assert outcome.error is None, outcome.error
        imported = outcome.result["imported"]  # torch's own lazy submodules of torch.save may load (milliseconds)
        heavy = [m for m in imported if m.split(".")[0] in ("focus_surgery", "ultralytics", "cv2", "PIL", "yaml")]
        assert heavy == [] and len(imported) <= 8, imported[:20]


def test_workers_default_to_the_cores_this_process_may_use(tmp_path, monkeypatch):
    import argparse
    import os

    from focus_surgery import folder

    seen = {}

    def record(jobs, work, options, workers, timeout_s, memory_bytes, progress):
        seen.update(workers=workers, option=options["workers"])
        return [folder.FileOutcome(src, dst, result={"src": src, "dst": dst}) for src, dst in jobs]

    monkeypatch.setattr(folder, "convert_isolated", record)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.pt").write_bytes(b"x")
    args = argparse.Namespace(
        src=str(tmp_path / "in"), dst=str(tmp_path / "out"), json=True, workers=None, timeout=300, max_memory=8
    )
    assert folder.convert_folder(args) == 0
    assert seen == {"workers": len(os.sched_getaffinity(0)), "option": len(os.sched_getaffinity(0))}
    assert folder.available_cores() == len(os.sched_getaffinity(0))


def _two_phase_jobs(tmp_path: Path, first: str) -> list[tuple[str, str]]:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    marker = tmp_path / "second-started"
    one, two = tmp_path / "in" / "one.pt", tmp_path / "in" / "two.pt"
    one.write_text(first if first == "never" else str(marker))
    two.write_text(str(marker))
    return [(str(one), str(tmp_path / "out" / "one.pt")), (str(two), str(tmp_path / "out" / "two.pt"))]


def test_the_next_file_starts_while_a_finished_child_is_still_ending(tmp_path):
    """One worker: the second file's child starts before the first child has ended (its exit waits for it), so a
    child's exit (tens of ms for a process holding torch) is never on the run's critical path."""
    import multiprocessing

    from tests import _folder_workers

    jobs = _two_phase_jobs(tmp_path, "marker")
    outcomes = convert_isolated(jobs, _folder_workers.dispatch_by_name, {}, workers=1)
    assert all(o.error is None for o in outcomes), outcomes
    assert (tmp_path / "out" / "one.pt").read_text() == "saw the next file start"
    assert multiprocessing.active_children() == []  # every child was joined before the run returned


def test_a_child_that_never_ends_after_its_result_is_killed(tmp_path):
    """A child that sent its result but hangs on exit is killed after ``EXIT_GRACE_S``; its result stands."""
    import multiprocessing

    from tests import _folder_workers

    outcomes = convert_isolated(_two_phase_jobs(tmp_path, "never"), _folder_workers.dispatch_by_name, {}, workers=1)
    assert all(o.error is None for o in outcomes), outcomes
    assert outcomes[0].result == {"src": outcomes[0].src}
    assert multiprocessing.active_children() == []


def test_the_fork_server_freezes_what_it_preloaded(tmp_path):
    """``gc.freeze()`` after the preload: a child's garbage collections never write to (and so never copy) the
    pages of the objects it inherited."""
    from tests._folder_workers import gc_frozen

    (outcome,) = convert_isolated(_jobs(tmp_path, ["ok"]), gc_frozen, {}, workers=1)
    assert outcome.result["frozen"] > 10_000, outcome  # torch's and our modules' objects
