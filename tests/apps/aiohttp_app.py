import meshlens.auto  # noqa: F401  (the one line a service adds)

import sys

import aiohttp
from aiohttp import web

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@routes.get("/items/{item_id}")
async def item(request: web.Request) -> web.Response:
    return web.json_response({"id": int(request.match_info["item_id"])})


@routes.get("/fail")
async def fail(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


@routes.get("/call")
async def call(request: web.Request) -> web.Response:
    """Calls another service with aiohttp's client: the outgoing request carries this trace."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(request.query["url"]) as response:
        body = await response.text()
    return web.json_response({"status": response.status, "body": body})


app = web.Application()
app.add_routes(routes)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
