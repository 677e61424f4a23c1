"""A minimal OTLP/HTTP receiver for the overhead benchmark: it counts, then answers 200.

It runs as its own process (``python sink.py --port N``) so that receiving spans never
competes for the measured service's GIL. It speaks just enough HTTP/1.1 for the OTLP
exporters (keep-alive, Content-Length or chunked bodies) and answers every
``POST /v1/{traces,metrics,logs}`` with an empty protobuf body, which is a valid
``Export*ServiceResponse``. ``GET /stats`` returns the counters as JSON; the harness
reads them before and after each run to prove that telemetry really arrived.

Trace requests are also decoded to count spans, so the harness can compare spans received
with requests sent: when the counts are asked for (the harness asks between runs), not as the
requests arrive. The sink shares a CPU with the load generator, and decoding a batch on
arrival (a few µs per span in the upb protobuf runtime) held wrk up for a few hundred µs each
time: the requests in flight then looked slower, in the tail most, by a cost of the benchmark's
own. What waits is bounded (``_MAX_PENDING_BYTES``; past it, bodies are decoded on arrival).
``--no-decode`` turns counting off.

``--mode slow`` waits ``--delay`` seconds before answering and ``--mode refuse``
answers 503, to model a slow or refusing collector.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import signal
import zlib
from collections import defaultdict
from typing import Any

_MAX_HEAD = 64 * 1024
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


_MAX_PENDING_BYTES = 256 * 1024 * 1024


class Counters:
    """Requests, bytes and spans received, per path; spans counted when asked for."""

    def __init__(self, decode: bool) -> None:
        self.decode = decode
        self.requests: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.spans = 0
        self.decode_errors = 0
        self._pending: list[tuple[bytes, str]] = []
        self._pending_bytes = 0

    def add(self, path: str, body: bytes, encoding: str) -> None:
        self.requests[path] += 1
        self.bytes[path] += len(body)
        if self.decode and path == "/v1/traces":
            if self._pending_bytes + len(body) > _MAX_PENDING_BYTES:
                self.spans += self._count_spans(body, encoding)
                return
            self._pending.append((body, encoding))
            self._pending_bytes += len(body)

    def _count_pending(self) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        for body, encoding in pending:
            self.spans += self._count_spans(body, encoding)

    def _count_spans(self, body: bytes, encoding: str) -> int:
        # Imported lazily: the sink starts faster and --no-decode never needs protobuf.
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
        except Exception:
            self.decode_errors += 1
            return 0
        return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)

    def snapshot(self) -> dict[str, Any]:
        self._count_pending()
        return {
            "requests": dict(self.requests),
            "bytes": dict(self.bytes),
            "spans": self.spans,
            "decode_errors": self.decode_errors,
        }


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readline()  # the blank line after the last chunk (no trailers sent)
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def _serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counters: Counters, mode: str, delay: float
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _MAX_HEAD:
                return
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await _read_body(reader, headers)
            if method == "GET" and path == "/stats":
                payload = json.dumps(counters.snapshot()).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(payload), payload)
                )
            elif method == "POST" and path.startswith("/v1/"):
                counters.add(path, body, headers.get("content-encoding", "").lower())
                if mode == "slow":
                    await asyncio.sleep(delay)
                writer.write(_REFUSED if mode == "refuse" else _OK)
            else:
                writer.write(_NOT_FOUND)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        return  # the client went away or sent something this sink does not speak
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(port: int, mode: str, delay: float, decode: bool) -> None:
    counters = Counters(decode)
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(r, w, counters, mode, delay), "127.0.0.1", port, limit=_MAX_HEAD
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("ok", "slow", "refuse"), default="ok")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds before answering in --mode slow")
    parser.add_argument("--no-decode", action="store_true", help="count bytes only, not spans")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.mode, args.delay, not args.no_decode))


if __name__ == "__main__":
    main()
