"""Loopback ports for the processes the demo, the tests and the benchmark start."""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, and never one this process handed out before.

    The kernel may give the same free port to two calls in a row. Two services started one
    after the other would then share it, and the second one's readiness check would be
    answered by the first (CI once saw a test talk to the wrong service that way).
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
