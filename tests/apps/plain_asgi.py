import meshlens.auto  # noqa: F401  (the one line a service adds)


async def app(scope, receive, send):
    """A bare ASGI callable: no framework to instrument."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
