import meshlens.auto  # noqa: F401  (the one line a service adds)

import asyncio
import json
import logging
import os
import signal
from concurrent import futures

import grpc
import grpc.aio
from aiohttp import web

# No generated code: generic handlers with raw bytes in and out.
SYNC_SERVICE = "meshlens.test.Echo"
AIO_SERVICE = "meshlens.test.AsyncEcho"
PORT = int(os.environ["PORT"])
GRPC_PORT = int(os.environ["GRPC_PORT"])
GRPC_AIO_PORT = int(os.environ["GRPC_AIO_PORT"])
TIMEOUT = 5
# The saga id comes from the request's baggage (MESHLENS_BAGGAGE_TO_ATTRIBUTES=saga.id).
logging.basicConfig(level=logging.INFO, format="said trace_id=%(trace_id)s saga=%(saga.id)s %(message)s")
log = logging.getLogger("grpc_app")


def _metadata(context) -> bytes:
    """The trace headers this call arrived with, for the tests to read."""
    return json.dumps({key: value for key, value in context.invocation_metadata()
                       if not key.startswith("grpc-")}).encode()


def _say(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"boom":
        raise RuntimeError("boom")
    if request == b"metadata":
        return _metadata(context)
    log.info("sync %s", request.decode())
    return b"echo:" + request


async def _say_async(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"boom":
        raise RuntimeError("boom")
    if request == b"metadata":
        return _metadata(context)
    log.info("aio %s", request.decode())
    return b"echo:" + request


def _handler(service: str, say) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(service, {"Say": grpc.unary_unary_rpc_method_handler(say)})


def _call_sync(target: int, service: str, message: bytes) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{target}") as channel:
        say = channel.unary_unary(f"/{service}/Say")
        try:
            return say(message, timeout=TIMEOUT).decode()
        except grpc.RpcError as error:
            return error.code().name


async def _call_aio(target: int, service: str, message: bytes) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{target}") as channel:
        say = channel.unary_unary(f"/{service}/Say")
        try:
            return (await say(message, timeout=TIMEOUT)).decode()
        except grpc.RpcError as error:
            return error.code().name


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def call(request: web.Request) -> web.Response:
    """/call/sync calls the asyncio server with the blocking client; /call/aio calls the
    threaded server with the asyncio client."""
    message = request.query["message"].encode()
    if request.match_info["client"] == "sync":
        result = await asyncio.to_thread(_call_sync, GRPC_AIO_PORT, AIO_SERVICE, message)
    else:
        result = await _call_aio(GRPC_PORT, SYNC_SERVICE, message)
    return web.json_response({"result": result})


async def main() -> None:
    sync_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sync_server.add_generic_rpc_handlers((_handler(SYNC_SERVICE, _say),))
    sync_server.add_insecure_port(f"127.0.0.1:{GRPC_PORT}")
    sync_server.start()
    aio_server = grpc.aio.server()
    aio_server.add_generic_rpc_handlers((_handler(AIO_SERVICE, _say_async),))
    aio_server.add_insecure_port(f"127.0.0.1:{GRPC_AIO_PORT}")
    await aio_server.start()

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/call/{client}", call)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    log.info("serving")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()
    await aio_server.stop(1)
    sync_server.stop(1).wait(5)


if __name__ == "__main__":
    asyncio.run(main())
