import sys
from pathlib import Path

# The tests import their helpers (harness) and the demo's local trace sink by plain name.
_TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS), str(_TESTS.parent)]
