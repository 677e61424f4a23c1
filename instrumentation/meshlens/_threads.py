"""Background threads at shutdown, where Python may refuse to start them."""

from __future__ import annotations

import threading
from collections.abc import Callable


def start_daemon(target: Callable[[], None], name: str) -> threading.Thread | None:
    """A started daemon thread running ``target``; None once the interpreter is finalising
    (Python 3.12+ starts no thread from an atexit handler), and the caller runs it inline."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    try:
        thread.start()
    except RuntimeError:
        return None
    return thread
