import meshlens.auto  # noqa: F401  (the one line a service adds)


def app(environ, start_response):
    """A bare WSGI callable: no framework to instrument."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
