"""A warning logged the first time something fails, silent after: telemetry that fails on every
request must not flood the service's log."""

from __future__ import annotations

import logging

_logger = logging.getLogger("meshlens")


class WarnOnce:
    """Call it from an ``except`` block: the first call logs ``message`` with the traceback."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            _logger.warning(self._message, exc_info=True)
