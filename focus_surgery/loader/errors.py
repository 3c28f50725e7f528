"""The one error a checkpoint that cannot be read raises."""


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint; the message is one line naming the file and the problem."""


class Refused(Exception):
    """The pickle asks for something the loader never does (a global outside the allow-list, a call with
    arguments, ...); raised while reading, turned into a CheckpointError naming the file."""
