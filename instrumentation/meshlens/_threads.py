"""Background threads at shutdown, where Python may refuse to start them."""

from __future__ import annotations

import threading
from collections.abc import Callable


def start_or_run(target: Callable[[], None], name: str) -> threading.Thread | None:
    """Runs ``target`` in a started daemon thread, returned; once the interpreter is
    finalising (Python 3.12+ starts no thread from an atexit handler), runs it here instead
    and returns None."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError:
        target()
        return None
    return thread
