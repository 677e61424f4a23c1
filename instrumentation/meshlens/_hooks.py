"""Runs code right after a module is imported, without importing it first.

meshlens must not import a library only to patch it (a service that has a library
installed may never use it), yet some patches need the library's module: they wait
here until the application imports it. A module already imported is patched at once.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

_logger = logging.getLogger("meshlens")

Hook = Callable[[ModuleType], None]


def _run(hook: Hook, module: ModuleType) -> None:
    try:
        hook(module)
    except Exception:  # a failed patch costs that telemetry, never the import
        _logger.warning("meshlens: patching %s failed; it runs without it", module.__name__, exc_info=True)


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.hooks: dict[str, list[Hook]] = {}
        self._lock = threading.Lock()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.hooks:
            return None
        with self._lock:
            hooks = self.hooks.pop(fullname, [])
        if not hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            loader = spec.loader
            if loader is None or not hasattr(loader, "exec_module"):
                return spec
            original = loader.exec_module

            def exec_module(module: ModuleType, original: Callable[[ModuleType], None] = original) -> None:
                original(module)
                for hook in hooks:
                    _run(hook, module)

            loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec
        return None


_finder = _AfterImport()


def after_import(name: str, hook: Hook) -> None:
    """Calls ``hook(module)`` once ``name`` is imported: now if it already is."""
    module = sys.modules.get(name)
    if module is not None:
        _run(hook, module)
        return
    with _finder._lock:
        _finder.hooks.setdefault(name, []).append(hook)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
