"""Loaded at interpreter start by ``meshlens-run`` (its folder is put first on PYTHONPATH).

Configures meshlens, then hands over to the application's own sitecustomize, if any.
"""

import contextlib
import importlib
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))

try:
    import meshlens.auto  # noqa: F401
finally:
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _here]
    del sys.modules["sitecustomize"]
    with contextlib.suppress(ImportError):
        importlib.import_module("sitecustomize")
