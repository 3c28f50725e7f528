"""Old YOLOv5-repository checkpoints: safe unpickling, exact rebuild as Ultralytics models, conversion, CLI."""
