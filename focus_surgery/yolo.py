"""Ultralytics' ``yolo`` command with focus-surgery loaded.

``focus-surgery yolo ...`` or ``python -m focus_surgery.yolo ...``.

Plain ``yolo`` is a console script that imports only Ultralytics, and Ultralytics loads no plugins: nothing of
focus-surgery runs in that process, so its parser cannot build a ``SPDConv`` / ``SpaceToDepth`` / ``LegacyDetect``
row (``KeyError``) nor find our shipped configs by name, without an edit of installed files. This registers our
rows, configs and the YOLOv5 training hooks, then hands every argument unchanged to ``ultralytics.cfg.entrypoint`` -
the function ``yolo`` runs.
"""

from __future__ import annotations

import sys


def run_yolo(argv: list[str]) -> int:
    """Run Ultralytics' CLI on ``argv`` (e.g. ``["train", "model=configs/yolov8n-spd.yaml", "data=..."]``).

    Returns:
        (int): 0 when Ultralytics returns normally, else the code of the ``SystemExit`` it raised.
    """
    from .integrations import register

    register()
    import ultralytics.cfg as ultralytics_cfg

    program = ["yolo", *argv]
    saved_argv, saved_cfg_argv = list(sys.argv), ultralytics_cfg.ARGV
    sys.argv[:] = program  # Ultralytics reads its arguments from sys.argv (bound as ARGV at its import)
    ultralytics_cfg.ARGV = program
    try:
        ultralytics_cfg.entrypoint()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv[:] = saved_argv
        ultralytics_cfg.ARGV = saved_cfg_argv
    return 0


def main() -> None:
    """``python -m focus_surgery.yolo <yolo arguments>``."""
    sys.exit(run_yolo(sys.argv[1:]))


if __name__ == "__main__":
    main()
