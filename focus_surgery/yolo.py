"""Ultralytics' ``yolo`` command with focus-surgery loaded: ``python -m focus_surgery.yolo train model=yolov8n-spd.yaml``.

The ``yolo`` console script does not import focus-surgery, so it knows neither our YAML rows nor our shipped configs.
This runs the same entry point (``ultralytics.cfg.entrypoint``, same arguments) after ``import focus_surgery``.
"""

from __future__ import annotations


def main() -> None:
    """Run Ultralytics' command line (arguments from ``sys.argv``) with our rows and configs registered."""
    from . import register

    register()
    from ultralytics.cfg import entrypoint

    entrypoint()


if __name__ == "__main__":
    main()
