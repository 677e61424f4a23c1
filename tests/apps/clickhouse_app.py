import meshlens.auto  # noqa: F401  (the one line a service adds)

import os

import clickhouse_connect
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException
from fastapi import FastAPI

HOST = "127.0.0.1"
TCP_PORT = int(os.environ["CLICKHOUSE_TCP_PORT"])
HTTP_PORT = int(os.environ["CLICKHOUSE_HTTP_PORT"])

app = FastAPI()


@app.get("/health")
def health():
    return "ok"


@app.get("/driver")
def use_driver():
    client = Client(host=HOST, port=TCP_PORT, database="default", connect_timeout=5)
    try:
        client.execute("CREATE TABLE IF NOT EXISTS meshlens_events (id UInt32, name String) ENGINE = Memory")
        client.execute("INSERT INTO meshlens_events (id, name) VALUES", [(1, "a"), (2, "b")])
        # Literals that must not reach the span: a string and a number.
        found = client.execute("SELECT count() FROM meshlens_events WHERE name != 'secret-literal' AND id < 424242")
        rows = list(client.execute_iter("SELECT id FROM meshlens_events ORDER BY id LIMIT 2"))
    finally:
        client.disconnect()
    return {"count": found[0][0], "rows": len(rows)}


@app.get("/driver/fail")
def driver_fail():
    client = Client(host=HOST, port=TCP_PORT, database="default", connect_timeout=5)
    try:
        client.execute("SELECT * FROM meshlens_no_such_table")
    except ServerException as exc:
        return {"code": exc.code}
    finally:
        client.disconnect()
    return {"code": 0}


@app.get("/driver/long")
def driver_long():
    client = Client(host=HOST, port=TCP_PORT, database="default", connect_timeout=5)
    try:
        # A statement of about 4,000 characters, most of them a string literal that the
        # length limit cuts in the middle.
        return {"length": client.execute("SELECT length('" + "confidential" * 330 + "')")[0][0]}
    finally:
        client.disconnect()


@app.get("/connect")
def use_connect():
    # clickhouse-connect needs ClickHouse 22 or later: against an older server its set-up
    # queries run (and are traced), and the second one fails.
    try:
        client = clickhouse_connect.get_client(host=HOST, port=HTTP_PORT, connect_timeout=5)
    except clickhouse_connect.driver.exceptions.DatabaseError as exc:
        return {"failed": type(exc).__name__}
    rows = client.query("SELECT 1").result_rows
    return {"failed": "", "rows": len(rows)}
