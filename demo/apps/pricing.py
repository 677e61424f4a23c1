"""An older service, traced by hand with jaeger-client and OpenTracing, left as it was:
meshlens's import line is the only change. Its OpenTracing spans reach the same OTLP
endpoint, in the same trace as everyone else's."""

import meshlens.auto  # noqa: F401  (the one line added to this service)
import logging
import os
import random
import time

from flask import Flask, jsonify, request
from jaeger_client import Config
from opentracing import Format

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("pricing")
app = Flask("pricing")
tracer = Config(
    config={"sampler": {"type": "const", "param": 1}, "logging": False},
    service_name="pricing",
    validate=True,
).initialize_tracer()


@app.route("/health")
def health() -> str:
    return "ok"


@app.route("/price/<int:product>")
def price(product: int):  # noqa: ANN201  (untyped, as old code is)
    if product % 89 == 0:  # its price feed is stale for some products: the callers see a 503
        return jsonify(error="price feed stale"), 503
    parent = tracer.extract(Format.HTTP_HEADERS, dict(request.headers))
    with tracer.start_active_span("price-lookup", child_of=parent) as scope:
        scope.span.set_tag("product.id", product)
        time.sleep(random.uniform(0.001, 0.005) if product % 10 else 0.12)  # every tenth is slow
        amount = 100 + product % 50
        scope.span.log_kv({"event": "priced", "amount": amount})
    log.info("priced product %d at %d", product, amount)
    return jsonify(product=product, price=amount)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
