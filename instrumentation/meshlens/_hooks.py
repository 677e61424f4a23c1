"""Runs code right after a module is imported, without importing it first.

meshlens must not import a library only to patch it (a service that has a library
installed may never use it), yet some patches need the library's module: they wait
until the application imports it. A module already imported is patched at once.
The mechanism is wrapt's post-import hooks (wrapt comes with OpenTelemetry's
instrumentation package); this module adds the guarantee that a failed patch never
fails the application's import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType

from wrapt import register_post_import_hook

_logger = logging.getLogger("meshlens")

Hook = Callable[[ModuleType], None]


def after_import(name: str, hook: Hook) -> None:
    """Calls ``hook(module)`` once ``name`` is imported: now if it already is."""

    def guarded(module: ModuleType) -> None:
        try:
            hook(module)
        except Exception:  # a failed patch costs that telemetry, never the import
            _logger.warning("meshlens: patching %s failed; it runs without it", name, exc_info=True)

    register_post_import_hook(guarded, name)
