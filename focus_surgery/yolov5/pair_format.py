"""The format name a ``.safetensors`` + JSON pair written for a YOLOv5 file carries (its metadata and its JSON).

A module of its own, importing nothing: the pair source asks it of every ``.safetensors`` file, and importing
``yolov5.convert`` for that would import YOLOv5's modules, Ultralytics, cv2 and PIL for every plain state dict."""

CONFIG_FORMAT = "focus-surgery/yolov5-legacy/1"
