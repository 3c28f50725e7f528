"""Preloaded by the folder runner's fork server only (``folder._context``): the server ends with the run.

Importing it anywhere else does nothing.
"""

from .parent_death import die_with_parent_process, in_fork_server

if in_fork_server():
    die_with_parent_process()
