"""A number that changes in every forked child: how hot paths notice a fork.

Reading it costs a list index; ``os.getpid()`` is a system call. Python's after-fork handlers
bump it; servers that fork without running them (uWSGI) get meshlens's own hook, which calls
:func:`count`. Code that must also survive a fork made some other way still compares the
process id now and then (every few thousand uses).
"""

from __future__ import annotations

import os

GENERATION = [0]
"""``GENERATION[0]`` is bumped in every forked child."""


def count() -> None:
    """This process is a new fork."""
    GENERATION[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=count)
