"""Trace ids on every log record and in logging's default formats."""

from __future__ import annotations

import io
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from meshlens import logs


@pytest.fixture
def installed():
    logs.install()
    yield
    logs.uninstall()


def test_records_inside_a_span_carry_its_ids(installed):
    tracer = TracerProvider().get_tracer("test")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("test_logs.inside")
    logger.addHandler(Keep())
    logger.propagate = False
    with tracer.start_as_current_span("work") as span:
        logger.warning("inside")
    logger.warning("outside")
    context = span.get_span_context()
    assert records[0].trace_id == format(context.trace_id, "032x")
    assert records[0].span_id == format(context.span_id, "016x")
    assert records[1].trace_id == logs.NO_ID and records[1].span_id == logs.NO_ID


def test_default_format_shows_the_ids(installed):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    logger = logging.getLogger("test_logs.format")
    logger.addHandler(handler)
    logger.propagate = False
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logger.warning("hello")
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert f"trace_id={trace_id}" in stream.getvalue()
    assert logging._STYLES["%"][1] == logs.DEFAULT_FORMAT
    assert "%(trace_id)s" in logging.lastResort.formatter._fmt


def test_install_is_idempotent_and_uninstall_restores(installed):
    factory = logging.getLogRecordFactory()
    logs.install()
    assert logging.getLogRecordFactory() is factory
    logs.uninstall()
    assert logging._STYLES["%"][1] == "%(levelname)s:%(name)s:%(message)s"
    record = logging.getLogger("x").makeRecord("x", logging.INFO, "f", 1, "m", (), None)
    assert not hasattr(record, "trace_id")


def test_listed_baggage_keys_become_record_fields():
    """MESHLENS_BAGGAGE_TO_ATTRIBUTES: a format may name a listed key; it is empty when the
    context has no such entry, and unlisted keys stay off the record."""
    from opentelemetry import baggage, context

    logs.install(["saga.id", "tenant"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(saga.id)s|%(tenant)s|%(message)s"))
    logger = logging.getLogger("test_logs.baggage")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = context.attach(baggage.set_baggage("card", "4111", baggage.set_baggage("saga.id", "s-9")))
        try:
            logger.warning("inside")
        finally:
            context.detach(token)
        logger.warning("outside")
    finally:
        logs.uninstall()
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["s-9||inside", "||outside"]
