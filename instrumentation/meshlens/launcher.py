"""``meshlens-run COMMAND [ARGS...]``: run a command with meshlens, no code change.

    meshlens-run gunicorn -w 4 app:app
    meshlens-run python app.py

The command's Python interpreter configures meshlens at start-up (through a
``sitecustomize`` module placed first on ``PYTHONPATH``), before any application
code is imported. For a pre-fork server the launcher also gives the workers a
shared metrics folder, so that the master and every worker report into one
``/metrics``. uWSGI is also asked for Python threads and for Python's own fork
hooks (``--enable-threads --py-call-uwsgi-fork-hooks``): meshlens is set up in the
master before uWSGI starts, its threads already run there, and without those hooks
uWSGI would fork workers without taking the GIL (a worker forked while one of those
threads held it would hang) and without Python's after-fork handlers.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from meshlens import multiprocess
from meshlens.settings import DEFAULT_METRICS_PORT, load_settings

_BOOTSTRAP = Path(__file__).with_name("_bootstrap")
PREFORK_SERVERS = ("gunicorn", "uwsgi")
UWSGI_OPTIONS = ("--enable-threads", "--py-call-uwsgi-fork-hooks")

USAGE = f"""usage: meshlens-run COMMAND [ARGS...]

Runs COMMAND with meshlens configured in its Python interpreter(s): traces over OTLP,
metrics on /metrics (port MESHLENS_METRICS_PORT, default {DEFAULT_METRICS_PORT}), trace ids in logs.
Settings come from the environment: see docs/settings.md.
"""


def _is_prefork(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    names = [os.path.basename(arg) for arg in argv[:4]]
    if any(name in PREFORK_SERVERS for name in names):
        return True
    if "uvicorn" in names:
        if any(arg == "--workers" or arg.startswith("--workers=") for arg in argv):
            return True
        try:
            return int(env.get("WEB_CONCURRENCY") or 1) > 1
        except ValueError:
            return False
    return False


def prepare_arguments(argv: Sequence[str]) -> list[str]:
    """The command line the command runs with."""
    args = list(argv)
    if os.path.basename(args[0]) == "uwsgi":
        args[1:1] = [option for option in UWSGI_OPTIONS if option not in args]
    return args


def prepare_environment(argv: Sequence[str], env: dict[str, str]) -> dict[str, str]:
    """The environment the command runs with."""
    env = dict(env)
    python_path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(part for part in (str(_BOOTSTRAP), python_path) if part)
    settings = load_settings(env)
    if _is_prefork(argv, env) and not settings.multiprocess_dir:
        # exec keeps this pid: the server's master is the group's leader.
        env["MESHLENS_MULTIPROC_DIR"] = str(multiprocess.group_dir(os.getpid()))
    return env


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        raise SystemExit(0 if args else 2)
    executable = shutil.which(args[0])
    if executable is None:
        sys.stderr.write(f"meshlens-run: command not found: {args[0]}\n")
        raise SystemExit(127)
    env = prepare_environment(args, dict(os.environ))
    os.execve(executable, prepare_arguments(args), env)
