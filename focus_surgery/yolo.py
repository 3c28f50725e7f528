"""``focus-surgery yolo ...`` / ``python -m focus_surgery.yolo ...``: Ultralytics' ``yolo`` command with our YAML rows
(``SPDConv``, ``SpaceToDepth``, ``LegacyDetect``), configs and YOLOv5 training hooks registered (Ultralytics loads no
plugins), every argument handed unchanged to ``ultralytics.cfg.entrypoint``.
"""

from __future__ import annotations

import sys


def run_yolo(argv: list[str]) -> int:
    """Run Ultralytics' CLI on ``argv`` (e.g. ``["train", "model=configs/yolov8n-spd.yaml", "data=..."]``); 0 when it
    returns normally, else the code of the ``SystemExit`` it raised."""
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
