"""ClickHouse from a service with only the import line, against a real clickhouse-server on
loopback (the system's package: 18.16, run by hand on free ports with a temporary data folder).

clickhouse-driver (the native protocol) runs its statements against it. clickhouse-connect
needs ClickHouse 22 or later: against this server its client set-up runs two queries, the first
succeeds and the second fails, and the test checks both spans and their metrics.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from library_checks import (
    CLIENT_KIND,
    INSTRUMENTATION_FAILED,
    SERVER_KIND,
    STATUS_ERROR,
    delta,
    descends_from,
    traceparent,
)

from harness import base_env, bin_path, free_port, running, started_sink

pytestmark = pytest.mark.slow

SERVER_BINARY = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
SCOPE = "meshlens.instrumentors.clickhouse"
DB_COUNT = "db_client_operation_duration_seconds_count"

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{data}/</path>
    <tmp_path>{data}/tmp/</tmp_path>
    <user_files_path>{data}/user_files/</user_files_path>
    <format_schema_path>{data}/format_schemas/</format_schema_path>
    <users_config>{users}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>5368709</mark_cache_size>
</yandex>
"""
USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default/></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default/></quotas>
</yandex>
"""


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory):
    if not os.path.exists(SERVER_BINARY):
        if os.environ.get("CI") == "true":
            pytest.fail("clickhouse-server is not installed (apt-get install -y clickhouse-server)")
        pytest.skip("clickhouse-server is not installed (apt-get install -y clickhouse-server)")
    folder = tmp_path_factory.mktemp("clickhouse")
    ports = {"tcp_port": free_port(), "http_port": free_port()}
    (folder / "users.xml").write_text(USERS)
    config = folder / "config.xml"
    config.write_text(CONFIG.format(data=folder / "data", users=folder / "users.xml", **ports))
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed with the server
    server = subprocess.Popen([SERVER_BINARY, f"--config-file={config}"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (folder / "server.log").read_text(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports['http_port']}/ping", timeout=2) as answer:
                    if answer.read().strip() == b"Ok.":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "clickhouse-server did not answer within 60 s"
            time.sleep(0.2)
        yield ports
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


sink = pytest.fixture(scope="module")(started_sink)


@pytest.fixture(scope="module")
def service(clickhouse, sink, tmp_path_factory):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="clickhouse-app",
                   CLICKHOUSE_TCP_PORT=str(clickhouse["tcp_port"]), CLICKHOUSE_HTTP_PORT=str(clickhouse["http_port"]))
    argv = [bin_path("uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "clickhouse_app:app"]
    with running(argv, port, env, Path(tmp_path_factory.mktemp("ch")) / "service.log") as service:
        yield service


def _request(service, sink, path, expected):
    trace_id, parent_span_id, header = traceparent()
    status, body, _ = service.get(path, {"traceparent": header})
    assert status == 200, body
    spans = sink.wait_trace(trace_id, lambda s: len([x for x in s if x.scope == SCOPE]) >= expected
                            and any(x.kind == SERVER_KIND for x in s))
    server = next(s for s in spans if s.kind == SERVER_KIND and s.parent_span_id == parent_span_id)
    operations = [s for s in spans if s.scope == SCOPE]
    assert len(operations) == expected, [s.name for s in operations]
    for span in operations:
        assert span.kind == CLIENT_KIND
        assert descends_from(span, server, spans)
        assert span.attributes["db.system.name"] == "clickhouse"
        assert span.attributes["server.address"] == "127.0.0.1"
    return operations


def test_driver_statements_are_child_spans_without_literals_and_counted(service, sink, clickhouse):
    before = service.metrics()
    operations = _request(service, sink, "/driver", 4)
    operations.sort(key=lambda span: span.start_ns)
    assert [s.name for s in operations] == ["CREATE meshlens_events", "INSERT meshlens_events",
                                            "SELECT meshlens_events", "SELECT meshlens_events"]
    assert [s.attributes["db.operation.name"] for s in operations] == ["CREATE", "INSERT", "SELECT", "SELECT"]
    for span in operations:
        assert span.attributes["db.namespace"] == "default"
        assert span.attributes["db.collection.name"] == "meshlens_events"
        assert span.attributes["server.port"] == clickhouse["tcp_port"]
    select = operations[2].attributes["db.query.text"]
    assert "secret-literal" not in select and "424242" not in select
    assert select == "SELECT count() FROM meshlens_events WHERE name != ? AND id < ?"
    # The streamed SELECT's span lasts until its rows were read.
    assert operations[3].attributes["db.query.text"] == "SELECT id FROM meshlens_events ORDER BY id LIMIT ?"

    after = service.metrics()
    labels = {"db_system_name": "clickhouse", "db_namespace": "default"}
    for operation, calls in {"CREATE": 1, "INSERT": 1, "SELECT": 2}.items():
        assert delta(before, after, DB_COUNT, db_operation_name=operation, error_type="", **labels) == calls
    assert delta(before, after, DB_COUNT, **labels) == 4


def test_driver_failure_is_an_error_span_counted_with_its_type(service, sink):
    before = service.metrics()
    [failed] = _request(service, sink, "/driver/fail", 1)
    assert failed.status_code == STATUS_ERROR
    assert failed.attributes["error.type"] == "clickhouse_driver.errors.ServerException"
    assert failed.attributes["db.response.status_code"] == "60"  # UNKNOWN_TABLE
    assert delta(before, service.metrics(), DB_COUNT, db_system_name="clickhouse", db_operation_name="SELECT",
                 error_type="clickhouse_driver.errors.ServerException") == 1


def test_connect_client_queries_are_traced_over_http(service, sink, clickhouse):
    before = service.metrics()
    version, settings = _request(service, sink, "/connect", 2)
    assert version.attributes["db.query.text"].startswith("SELECT version()")
    assert version.attributes["server.port"] == clickhouse["http_port"]
    assert version.status_code != STATUS_ERROR
    # The server is too old for the client: its settings query fails, as an error span.
    assert settings.attributes["db.collection.name"] == "system.settings"
    assert settings.status_code == STATUS_ERROR
    after = service.metrics()
    assert delta(before, after, DB_COUNT, db_system_name="clickhouse", db_operation_name="SELECT") == 2
    assert delta(before, after, DB_COUNT, db_system_name="clickhouse",
                 error_type="clickhouse_connect.driver.exceptions.DatabaseError") == 1


def test_long_query_text_is_cut_and_counted(service, sink):
    before = service.metrics()
    [span] = _request(service, sink, "/driver/long", 1)
    text = span.attributes["db.query.text"]
    # The literal is removed even though the limit cut it before its closing quote.
    assert text == "SELECT length(?"
    assert delta(before, service.metrics(), "meshlens_db_query_text_truncated_total", db_system_name="clickhouse") == 1


def test_no_instrumentation_failed(service):
    log = service.log()
    assert INSTRUMENTATION_FAILED not in log, log
