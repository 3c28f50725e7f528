"""The one error a checkpoint that cannot be read raises (the package-wide ``CheckpointError``)."""

from ..errors import CheckpointError


class Refused(Exception):
    """The pickle asks for something the loader never does (a global outside the allow-list, a call with
    arguments, ...); raised while reading, turned into a CheckpointError naming the file."""


__all__ = ["CheckpointError", "Refused"]
