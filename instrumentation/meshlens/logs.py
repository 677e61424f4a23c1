"""Trace ids in logs: every stdlib log record carries ``trace_id`` and ``span_id``.

A record factory adds the ids of the span current when the record is created, so
any handler or formatter can use ``%(trace_id)s``; records outside a span carry
``"0"``. logging's default formats gain the two ids: the one ``logging.basicConfig()``
uses when no format is given, and the one of ``logging.lastResort``, which prints
the warnings of a service that never configured logging at all.

Baggage keys named in ``MESHLENS_BAGGAGE_TO_ATTRIBUTES`` become record attributes of
the same name (``%(saga.id)s`` is a valid format field), empty when the request
carries no such entry, so a format that names one never fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import baggage, trace

TRACE_ID = "trace_id"
SPAN_ID = "span_id"
NO_ID = "0"
DEFAULT_FORMAT = f"%(levelname)s:%(name)s:[{TRACE_ID}=%({TRACE_ID})s {SPAN_ID}=%({SPAN_ID})s] %(message)s"
"""logging.BASIC_FORMAT with the ids added."""

_installed: Callable[..., logging.LogRecord] | None = None
_previous_factory: Callable[..., logging.LogRecord] | None = None
_previous_default: Any = None
_previous_last_resort: logging.Formatter | None = None


def install(baggage_keys: Iterable[str] = ()) -> None:
    """Adds the ids, and the named baggage entries, to every record from now on (idempotent)."""
    global _installed, _previous_factory, _previous_default, _previous_last_resort
    if _installed is not None:
        return
    previous = logging.getLogRecordFactory()
    get_current_span = trace.get_current_span
    get_all_baggage = baggage.get_all
    keys = tuple(dict.fromkeys(baggage_keys))

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        context = get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = NO_ID
            record.span_id = NO_ID
        if keys:
            entries = get_all_baggage()
            for key in keys:
                value = entries.get(key)
                setattr(record, key, "" if value is None else str(value))
        return record

    logging.setLogRecordFactory(factory)
    _previous_factory = previous
    _installed = factory
    # basicConfig() reads its default format from this table, not from BASIC_FORMAT.
    styles = getattr(logging, "_STYLES", None)
    if isinstance(styles, dict) and "%" in styles:
        _previous_default = styles["%"]
        styles["%"] = (styles["%"][0], DEFAULT_FORMAT)
    logging.BASIC_FORMAT = DEFAULT_FORMAT
    if logging.lastResort is not None:
        _previous_last_resort = logging.lastResort.formatter
        logging.lastResort.setFormatter(logging.Formatter(DEFAULT_FORMAT))


def uninstall() -> None:
    """Restores logging as it was (for tests)."""
    global _installed, _previous_factory, _previous_default, _previous_last_resort
    if _installed is None:
        return
    if logging.getLogRecordFactory() is _installed and _previous_factory is not None:
        logging.setLogRecordFactory(_previous_factory)
    styles = getattr(logging, "_STYLES", None)
    if isinstance(styles, dict) and _previous_default is not None:
        styles["%"] = _previous_default
        logging.BASIC_FORMAT = _previous_default[1]
    if logging.lastResort is not None:
        logging.lastResort.formatter = _previous_last_resort
    _installed = _previous_factory = _previous_default = _previous_last_resort = None
