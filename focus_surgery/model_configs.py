"""The YOLO model configs that ship with focus-surgery (top-level ``configs/``, installed as ``focus_surgery/configs``),
found by name as Ultralytics' ``check_yaml`` finds its own; the Ultralytics integration asks ``find_config`` only
after Ultralytics' own search found nothing, so a local file and Ultralytics' configs keep precedence.
"""

from __future__ import annotations

import glob
import itertools
import re
from pathlib import Path

_SENTENCE_END = re.compile(r"\.(\s|$)")


def config_dir() -> Path:
    """The folder holding the shipped configs: ``focus_surgery/configs`` when installed, the top-level ``configs``
    of a checkout (or an editable install) otherwise."""
    installed = Path(__file__).resolve().parent / "configs"
    checkout = installed.parent.parent
    if installed.is_dir() or not (checkout / "pyproject.toml").is_file():
        return installed
    return checkout / "configs"


def find_config(name: str | Path) -> str | None:
    """Path of the shipped config ``name`` (scale letter dropped, e.g. ``"yolov8-spd.yaml"``), or None: one match of
    ``glob(config_dir() / "**" / name)``, as Ultralytics' ``check_file`` searches its own package."""
    name = str(name).strip()
    if not name or Path(name).is_absolute() or Path(name).suffix not in (".yaml", ".yml"):
        return None
    matches = glob.glob(str(config_dir() / "**" / glob.escape(name)), recursive=True)
    return matches[0] if len(matches) == 1 else None


def _scales(text: str) -> list[str]:
    """The scale letters of a config's ``scales:`` block (no YAML parser needed for our own files)."""
    block = re.search(r"^scales:.*\n((?:[ \t]+.*\n?)+)", text, flags=re.MULTILINE)
    return re.findall(r"^[ \t]+([a-z]):", block.group(1), flags=re.MULTILINE) if block else []


def _build_name(file: str, scales: list[str]) -> str:
    """``yolov8-spd.yaml`` with scales n, s -> ``yolov8{n,s}-spd.yaml``: the names that build it (scale letter after
    the version digits, as Ultralytics reads it)."""
    if not scales:
        return file
    letters = scales[0] if len(scales) == 1 else "{" + ",".join(scales) + "}"
    return re.sub(r"^(yolo(?:e-)?v?\d+)", lambda m: m.group(1) + letters, file, count=1)


def list_configs() -> dict[str, str]:
    """The shipped configs, ``{file name: "build as <names>: <first sentence of the file's header comment>"}``."""
    configs = {}
    for path in sorted(config_dir().glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        comments = itertools.takewhile(lambda row: row.startswith("#"), text.splitlines())  # the header comment
        header = " ".join(row.lstrip("#").strip() for row in comments)
        end = _SENTENCE_END.search(header)
        summary = header[: end.start() + 1] if end else header
        configs[path.name] = f"build as {_build_name(path.name, _scales(text))}: {summary}"
    return configs
