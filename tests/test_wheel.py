"""The package as `pip install focus-surgery` users get it, not as the checkout runs it.

The sdist and the wheel are built from a copy of the checkout with the build backend pyproject.toml names (PEP 517,
no build isolation, no network), the sdist is built into a wheel again, and the wheel is installed (not editable)
into a fresh virtual environment. That environment reuses the dependencies this test environment already installed:
each entry of its site-packages is linked in, except this project's own (the editable install), so no second torch
is installed and nothing of the checkout is importable. From a folder outside the checkout it then runs the demo,
the CLI on a sample checkpoint, configs built by name and a smoke subset of the tests.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

import focus_surgery

ROOT = Path(__file__).resolve().parents[1]
SMOKE_TESTS = (
    "test_orders.py",
    "test_layers.py",
    "test_remap.py",
    "test_verify.py",
    "test_surgery.py",
    "test_model_configs.py",
    "test_public_api_typed.py",
)
OWN_ENTRY = re.compile(r"^(__editable__[._]+)?focus_surgery", re.IGNORECASE)  # ours in site-packages: not reused
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "out"
)
VERSION = focus_surgery.__version__
DIST_INFO = f"focus_surgery-{VERSION}.dist-info"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("installed-wheel")]  # one worker builds once


def _run(args: list, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} (in {cwd}) exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done


def _pip(*args) -> list:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]


@dataclass
class Dist:
    sdist: Path
    wheel: Path  # built from the source tree
    wheel_from_sdist: Path


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Dist:
    """sdist and wheel of a copy of the checkout (building in place would leave build/ and *.egg-info in it)."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES, symlinks=True)
    backend = tomllib.loads((src / "pyproject.toml").read_text())["build-system"]["build-backend"]
    hook = "import importlib, sys; print(importlib.import_module(sys.argv[1]).build_sdist(sys.argv[2]))"
    sdist = tmp / "sdist" / _run([sys.executable, "-c", hook, backend, tmp / "sdist"], cwd=src).stdout.split()[-1]
    _run(_pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "wheel", src), cwd=tmp)
    _run(_pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "from-sdist", sdist), cwd=tmp)
    (wheel,), (again,) = (tmp / "wheel").glob("*.whl"), (tmp / "from-sdist").glob("*.whl")
    return Dist(sdist, wheel, again)


def _record(wheel: Path) -> set[tuple[str, ...]]:
    """(path, hash, size) of every file the wheel holds, from its RECORD."""
    with zipfile.ZipFile(wheel) as zf:
        rows = csv.reader(io.StringIO(zf.read(f"{DIST_INFO}/RECORD").decode()))
        return {tuple(row) for row in rows if row and row[0] != f"{DIST_INFO}/RECORD"}


def test_wheel_holds_the_package_configs_license_and_entry_point(dist):
    with zipfile.ZipFile(dist.wheel) as zf:
        names = set(zf.namelist())
        entry_points = zf.read(f"{DIST_INFO}/entry_points.txt").decode()
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "focus_surgery").rglob("*.py")}
    configs = {f"focus_surgery/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert len(configs) >= 5 and configs <= names, configs - names
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert {"focus_surgery/py.typed", "focus_surgery/configs/README.md", f"{DIST_INFO}/licenses/LICENSE"} <= names
    assert "[console_scripts]\nfocus-surgery = focus_surgery.cli:main" in entry_points
    strays = {n for n in names if not n.startswith(("focus_surgery/", f"{DIST_INFO}/")) or "__pycache__" in n}
    assert not strays, f"files outside the package: {sorted(strays)}"


def test_wheel_metadata(dist):
    with zipfile.ZipFile(dist.wheel) as zf:
        metadata = zf.read(f"{DIST_INFO}/METADATA").decode().split("\n\n", 1)[0]
    fields: dict[str, list[str]] = {}
    for line in metadata.splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    assert fields["Version"] == [VERSION] and fields["License-Expression"] == ["MIT"]
    assert fields["License-File"] == ["LICENSE"]
    assert {"Homepage", "Changelog", "Issues"} <= {url.split(",")[0] for url in fields["Project-URL"]}
    assert {"Typing :: Typed", "Programming Language :: Python :: 3.11"} <= set(fields["Classifier"])
    assert {"ultralytics", "timm", "safetensors", "onnx", "all"} <= set(fields["Provides-Extra"])
    assert any(r.startswith("torch>=") for r in fields["Requires-Dist"])


def test_sdist_builds_the_same_wheel(dist):
    assert dist.wheel.name == dist.wheel_from_sdist.name
    assert _record(dist.wheel) == _record(dist.wheel_from_sdist)  # same files, byte for byte (sha256 each)
    with tarfile.open(dist.sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "setup.py", "configs/yolov8-spd.yaml"} <= names
    assert not [n for n in names if n.startswith("tests/")]  # no half test suite without its fixtures


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> dict:
    """A fresh venv holding the wheel, this environment's dependencies linked in; returns the env to run it with."""
    tmp = tmp_path_factory.mktemp("venv")
    prefix = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", prefix], cwd=tmp)
    python = prefix / "bin" / "python"
    target = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).stdout.strip()
    )
    for folder in map(Path, site.getsitepackages()):
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not OWN_ENTRY.match(entry.name) and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env.update(
        PATH=f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(prefix),
        PYTHONNOUSERSITE="1",
        YOLO_OFFLINE="1",
        YOLO_CONFIG_DIR=str(tmp / "ultralytics-config"),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
    )
    _run(
        [python, "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "--no-index", dist.wheel],
        cwd=tmp,
        env=env,
    )
    problems = subprocess.run([python, "-m", "pip", "check"], cwd=tmp, env=env, capture_output=True, text=True).stdout
    assert not [line for line in problems.splitlines() if line.lower().startswith("focus-surgery")], problems
    outside = tmp / "work"  # where the user stands: not the checkout
    outside.mkdir()
    return {"env": env, "cwd": outside, "site": target}


def _in_venv(venv: dict, *args) -> subprocess.CompletedProcess:
    return _run(list(args), cwd=venv["cwd"], env=venv["env"])


IMPORTED = """
import importlib.metadata, json, os, sys
import focus_surgery
print(json.dumps({"file": focus_surgery.__file__, "version": focus_surgery.__version__,
                  "path": [os.path.realpath(p) for p in sys.path],
                  "dist": importlib.metadata.version("focus-surgery"), "configs": focus_surgery.list_configs()}))
"""


def test_installed_package_is_imported_not_the_checkout(venv):
    info = json.loads(_in_venv(venv, "python", "-c", IMPORTED).stdout)
    print("focus_surgery imported from", info["file"])
    assert Path(info["file"]).parent == venv["site"] / "focus_surgery", info["file"]
    assert str(ROOT) not in info["path"] and str(venv["cwd"].resolve()) in info["path"], info["path"]
    assert info["version"] == info["dist"] == VERSION
    assert sorted(info["configs"]) == sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert _in_venv(venv, "focus-surgery", "--version").stdout.strip() == f"focus-surgery {VERSION}"


def test_installed_demo_and_cli_on_a_sample_checkpoint(venv):
    assert "bit-identical: True" in _in_venv(venv, "focus-surgery", "demo").stdout
    shutil.copy(ROOT / "checkpoints" / "yolo-focus-tiny.pt", venv["cwd"] / "tiny.pt")
    report = json.loads(
        _in_venv(venv, "focus-surgery", "convert", "tiny.pt", "tiny-conv.pt", "--verify", "--json").stdout
    )
    assert report["max_abs_err"] < 1e-9 and (venv["cwd"] / "tiny-conv.pt").stat().st_size > 0, report


BY_NAME = """
import focus_surgery as fs
from focus_surgery.yolo import main
from ultralytics import YOLO
model = YOLO("yolov8n-spd.yaml", verbose=False).model
print(type(model.model[0]).__name__, model.yaml["scale"], fs.model_configs.find_config("yolov8-spd.yaml"))
main()  # Ultralytics' yolo command (python -m focus_surgery.yolo), with this process's arguments
"""


def test_installed_configs_build_by_name_in_python_and_the_yolo_command(venv):
    out = _in_venv(venv, "python", "-c", BY_NAME, "predict", "model=yolov5n-focus.yaml", "imgsz=64", "save=False")
    kind, scale, path = re.search(r"^(\w+) (\w) (/\S+)$", out.stdout, flags=re.MULTILINE).groups()
    assert (kind, scale) == ("SPDConv", "n") and Path(path) == venv["site"] / "focus_surgery/configs/yolov8-spd.yaml"
    assert "image 2/2" in out.stdout + out.stderr, out.stdout + out.stderr  # predicted on Ultralytics' 2 sample images


def test_smoke_tests_pass_against_the_installed_package(venv):
    """The checkout's own tests, run by the venv's Python with the checkout's pyproject.toml (pythonpath = ".") out
    of play; the first test proves which focus_surgery they import."""
    (venv["cwd"] / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: slow tests\n")
    (venv["cwd"] / "test_installed.py").write_text(
        "import sys, focus_surgery\n"
        "def test_imports_the_installed_package():\n"
        f"    assert focus_surgery.__file__.startswith({str(venv['site'])!r}), focus_surgery.__file__\n"
        f"    assert {str(ROOT)!r} not in sys.path\n"
    )
    tests = [ROOT / "tests" / name for name in SMOKE_TESTS]
    out = _in_venv(
        venv,
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        "pytest.ini",
        "--rootdir",
        ".",
        "test_installed.py",
        *tests,
    ).stdout
    assert re.search(r"\b\d{3,} passed\b", out) and " failed" not in out, out
