"""placeholder"""
from .base import Source


class Yolov7Source(Source):
    name = "yolov7"

    def claims(self, loaded) -> bool:
        return False
