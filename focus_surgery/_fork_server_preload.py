"""Preloaded by the folder runner's fork server only (``folder._context``): the server ends with the run.

In the server it imports what a conversion needs (a child would otherwise import the YOLOv5 and Ultralytics code,
cv2 and PIL again for every file, ~1.4 s each) and what every child runs before it (the folder runner's child
function, multiprocessing's fork-server client, ``resource`` for the memory limit: 10-20 ms of each file), then
freezes the garbage collector's view of it: a child's collections never write to those objects, so their pages stay
shared instead of being copied into every child.
Importing it anywhere else does nothing.
"""

import gc

from .parent_death import die_with_parent_process, in_fork_server

if in_fork_server():
    die_with_parent_process()
    import multiprocessing.popen_forkserver  # noqa: F401
    import resource  # noqa: F401

    import torch  # noqa: F401

    from . import files, folder  # noqa: F401
    from .yolov5 import convert  # noqa: F401

    gc.freeze()
