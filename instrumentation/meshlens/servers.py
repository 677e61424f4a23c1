"""Plain WSGI and ASGI apps served by gunicorn or uvicorn, with no framework to instrument.

Framework apps are traced by their framework's instrumentation (Flask, Django,
FastAPI, ...). An app that is a bare WSGI or ASGI callable has no framework to patch,
so meshlens wraps it in its own WSGI or ASGI middleware (:mod:`meshlens.httpserver`), or the contrib one
when asked, when the server hands it to its worker.

The import line runs while the server is loading the app, so the app object does
not exist yet. meshlens therefore intercepts the attribute the server stores the
loaded app in (gunicorn's ``Worker.wsgi``, uvicorn's ``Config.loaded_app``) and
wraps the value on its way in. Apps of instrumented frameworks pass unchanged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import TracerProvider

from meshlens._hooks import after_import
from meshlens.httpserver import HttpServerTelemetry

_logger = logging.getLogger("meshlens")

# Packages whose apps their own contrib instrumentation already traces (the instrumented
# subclasses of framework apps live in `opentelemetry.instrumentation.*`).
FRAMEWORK_PACKAGES = frozenset(
    {"flask", "django", "fastapi", "starlette", "falcon", "pyramid", "tornado", "aiohttp", "quart", "sanic",
     "opentelemetry"}
)
_WRAPPED = "_meshlens_wrapped"


def _framework_app(app: Any) -> bool:
    if getattr(app, "_is_instrumented_by_opentelemetry", False) or getattr(app, _WRAPPED, False):
        return True
    module = getattr(type(app), "__module__", "") if not inspect.isfunction(app) else app.__module__
    return (module or "").split(".", 1)[0] in FRAMEWORK_PACKAGES


def is_asgi(app: Any) -> bool:
    """The ASGI 3 test uvicorn applies: an async callable."""
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


AppWrapper = Callable[[Any], Any]
"""Takes a bare WSGI or ASGI app, returns it traced."""


def wrap(app: Any, wrapper: AppWrapper) -> Any:
    """The app, traced by ``wrapper``; unchanged if a framework traces it."""
    if app is None or _framework_app(app):
        return app
    wrapped = wrapper(app)
    if wrapped is not app:
        setattr(wrapped, _WRAPPED, True)
    return wrapped


def meshlens_wrapper(telemetry: HttpServerTelemetry) -> AppWrapper:
    """meshlens's own middlewares (:mod:`meshlens.httpserver`)."""

    def wrapper(app: Any) -> Any:
        return telemetry.asgi(app) if is_asgi(app) else telemetry.wsgi(app)

    return wrapper


def contrib_wrapper(tracer_provider: TracerProvider, asgi_options: dict[str, Any]) -> AppWrapper:
    """The contrib WSGI and ASGI middlewares (``MESHLENS_HTTP_SERVER_SPANS=contrib``)."""

    def wrapper(app: Any) -> Any:
        try:
            if is_asgi(app):
                from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as AsgiMiddleware

                return AsgiMiddleware(
                    app, tracer_provider=tracer_provider, meter_provider=NoOpMeterProvider(), **asgi_options
                )
            from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WsgiMiddleware

            return WsgiMiddleware(app, tracer_provider=tracer_provider, meter_provider=NoOpMeterProvider())
        except ImportError as exc:
            kind = "asgi" if is_asgi(app) else "wsgi"
            _logger.warning("meshlens: %s is needed to trace a plain %s app (pip install 'meshlens[%s]')",
                            exc.name, kind.upper(), kind)
            return app

    return wrapper


def _intercept(cls: type, attribute: str, transform: Callable[[Any, Any], Any]) -> None:
    """Makes ``cls.attribute`` a property whose setter passes values through ``transform``."""
    if isinstance(cls.__dict__.get(attribute), property):
        return
    stored = f"_meshlens_{attribute}"

    def get(instance: Any) -> Any:
        return instance.__dict__.get(stored)

    def set_(instance: Any, value: Any) -> None:
        try:
            value = transform(instance, value)
        except Exception:  # never lose the app over telemetry
            _logger.debug("meshlens: could not wrap the app", exc_info=True)
        instance.__dict__[stored] = value

    setattr(cls, attribute, property(get, set_))


def _hook_gunicorn(module: ModuleType, wrapper: AppWrapper) -> None:
    _intercept(module.Worker, "wsgi", lambda _worker, app: wrap(app, wrapper))


def _hook_uvicorn(module: ModuleType, wrapper: AppWrapper) -> None:
    def first_app_only(config: Any, app: Any) -> Any:
        # Config.load stores the imported app first, then the server's own middlewares
        # around it: wrap the first value only, and never an app factory.
        if config.__dict__.get("_meshlens_seen") or getattr(config, "factory", False):
            return app
        config.__dict__["_meshlens_seen"] = True
        return wrap(app, wrapper)

    _intercept(module.Config, "loaded_app", first_app_only)


SERVER_MODULES = {"gunicorn.workers.base": _hook_gunicorn, "uvicorn.config": _hook_uvicorn}


def hook_servers(wrapper: AppWrapper) -> None:
    """Intercepts the app of gunicorn and uvicorn, now if imported, else when they are
    (``meshlens-run`` configures meshlens before the server is imported)."""
    for name, hook in SERVER_MODULES.items():
        after_import(name, functools.partial(hook, wrapper=wrapper))
