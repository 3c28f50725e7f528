"""Run the focus-surgery CLI on untrusted files under a wall-time and an address-space limit, measuring peak memory.

Starting ``python -m focus_surgery`` costs 3-6 s of imports (torch, Ultralytics) on the 2-core CI machine, more than
the hostile files themselves. So a *fork server* imports the CLI once, then forks one child per run: the child
sets ``RLIMIT_AS`` to its own size after the imports plus ``AS_HEADROOM``, points fd 1 / 2 at files and calls
``focus_surgery.cli.main(argv)`` exactly as ``python -m focus_surgery`` does. A crash, a hang or a runaway
allocation ends that child only; the server reports its exit code or signal, its wall time and its peak RSS
(``wait4``). ``run_fresh`` runs the real ``python -m focus_surgery`` for the checks that must see the real program.

Baseline measured on this machine (torch 2.14.1, Ultralytics 8.4.190, Python 3.11): ``python -m focus_surgery``
after importing torch + Ultralytics has a 3.4 GB address space (VmPeak, mostly reserved, not resident) and a peak
RSS of 0.87-0.94 GB; the run's limit is its own size after the imports plus ``AS_HEADROOM`` (4 GiB). A forked
child counts only the pages it touches: 310-320 MiB peak RSS for a refused file, 340-390 MiB for a valid YOLOv5
conversion, which is the baseline the hostile-file test states its memory bound against.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AS_HEADROOM = 4 << 30  # address space a run may add to what the imports took
TIME_LIMIT = 30.0  # seconds a run may take before it is killed (the files are <= 2 MB; a run takes < 2 s)
WARM_IMPORTS = (
    "focus_surgery.cli",
    "focus_surgery.folder",
    "focus_surgery.yolov5.rebuild",
    "focus_surgery.yolov5.convert",
    "focus_surgery.loader",
    "focus_surgery.folder",
    "ultralytics.nn.tasks",
    "safetensors.torch",
    "focus_surgery.onnx_graph.runtime",  # onnx + onnxruntime: the ONNX hostile files start at once too
    "onnx.reference",
    "onnxruntime",
)


@dataclass
class Outcome:
    """What one CLI run did."""

    argv: list[str]
    returncode: int | None  # exit status; None when a signal ended it
    signal: int | None
    timed_out: bool
    seconds: float
    peak_rss: int  # bytes
    stdout: bytes
    stderr: bytes

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.decode("utf-8", "replace").splitlines()

    def __str__(self) -> str:
        how = "timed out" if self.timed_out else (f"signal {self.signal}" if self.signal else f"exit {self.returncode}")
        args = " ".join(os.fsencode(a).decode("utf-8", "backslashreplace") for a in self.argv)  # printable names
        return (
            f"{args}: {how} after {self.seconds:.1f} s, peak RSS {self.peak_rss / 2**20:.0f} MiB, "
            f"stderr {self.stderr[-600:]!r}"
        )


PASSED_ON = ("FOCUS_SURGERY_LOAD_MODE",)  # set by a test after the server started; each job carries it


def _environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", YOLO_OFFLINE="1", MPLBACKEND="Agg")
    env.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="focus-surgery-ultralytics-config-"))  # no fixed path
    return env


def _decode_path(text: str) -> str:
    return os.fsdecode(bytes.fromhex(text))


# ------------------------------------------------------------------------------------------------ server side


def _vm_size() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(
    argv: list[str], out: str, err: str, headroom: int, cwd: str | None = None, env: dict | None = None
) -> None:
    import resource

    for name in PASSED_ON:
        os.environ.pop(name, None)
    os.environ.update(env or {})

    if cwd is not None:  # relative names in the file (external data) must not resolve against the server's folder
        os.chdir(cwd)

    limit = _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for fd, name in ((1, out), (2, err)):
        handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    # text streams as the interpreter makes them: stdout with the locale's error handler, stderr backslashreplace
    real_out, real_err = sys.__stdout__, sys.__stderr__
    sys.stdout = open(1, "w", encoding=real_out.encoding, errors=real_out.errors, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding=real_err.encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["focus_surgery", *argv]
    code = 0
    try:
        from focus_surgery.cli import main

        code = main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # what the interpreter does with an uncaught exception: traceback, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)


def serve() -> None:
    """Fork server loop: one JSON job per stdin line, one JSON outcome per stdout line."""
    import importlib

    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    reply = sys.stdout
    print(json.dumps({"ready": True, "pid": os.getpid()}), file=reply, flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        argv = [_decode_path(a) for a in job["argv"]]
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                cwd = _decode_path(job["cwd"]) if job.get("cwd") is not None else None
                _child(argv, job["out"], job["err"], job["headroom"], cwd, job.get("env"))
            finally:
                os._exit(120)
        try:
            os.setpgid(pid, pid)  # also here: no race with a kill before the child ran setpgid itself
        except OSError:
            pass
        timed_out, status, usage = False, 0, None
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - started > job["limit"]:
                timed_out = True
                os.killpg(pid, signal.SIGKILL)
                _, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.02)
        seconds = time.monotonic() - started
        result = {
            "seconds": seconds,
            "timed_out": timed_out,
            "peak_rss": usage.ru_maxrss * 1024,
            "returncode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        }
        print(json.dumps(result), file=reply, flush=True)


# ------------------------------------------------------------------------------------------------ client side


class BoundedCLI:
    """Client of one fork server (start it once per test session: the imports are the slow part)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=_environment(),
            text=True,
        )
        ready = json.loads(self.proc.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise RuntimeError("the CLI fork server did not start")

    def run(
        self,
        *args: str | os.PathLike,
        limit: float = TIME_LIMIT,
        headroom: int = AS_HEADROOM,
        cwd: str | os.PathLike | None = None,
    ) -> Outcome:
        """One CLI run in a forked child (working directory ``cwd``, default the repository root)."""
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        argv = [os.fsencode(a).hex() for a in args]
        job = {"argv": argv, "out": str(out), "err": str(err), "limit": limit, "headroom": headroom}
        # the loader mode a test chose (conftest.loader_mode) reaches the child, though the server started before
        job["env"] = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        if cwd is not None:
            job["cwd"] = os.fsencode(os.fspath(cwd)).hex()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        result = json.loads(self.proc.stdout.readline())
        return Outcome(
            [os.fsdecode(a) for a in map(os.fspath, args)],
            result["returncode"],
            result["signal"],
            result["timed_out"],
            result["seconds"],
            result["peak_rss"],
            out.read_bytes(),
            err.read_bytes(),
        )

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_fresh(
    *args: str | os.PathLike, limit: float = 120.0, headroom: int = AS_HEADROOM, cwd: str | os.PathLike = ROOT
) -> Outcome:
    """The real ``python -m focus_surgery ARGS`` in a new process (address space: 3.5 GiB imports + headroom)."""
    import resource

    def limits() -> None:
        os.setpgid(0, 0)
        resource.setrlimit(resource.RLIMIT_AS, ((7 << 29) + headroom, (7 << 29) + headroom))

    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "focus_surgery", *map(os.fspath, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=_environment(),
        preexec_fn=limits,
    )
    timed_out = False
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    code = proc.returncode
    return Outcome(
        [os.fsdecode(os.fspath(a)) for a in args],
        code if code >= 0 else None,
        -code if code < 0 else None,
        timed_out,
        time.monotonic() - started,
        0,
        stdout,
        stderr,
    )


if __name__ == "__main__":
    serve()
