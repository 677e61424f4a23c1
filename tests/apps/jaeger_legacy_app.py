"""A jaeger-client service as it was written before meshlens: Flask, OpenTracing spans, a
Jaeger tracer from jaeger_client.Config, headers injected by hand. Run it alone for the
legacy service (spans go to the Jaeger agent's UDP port, JAEGER_AGENT_PORT), or import it
after `import meshlens.auto` (jaeger_meshlens_app.py): the code is the same."""

import json
import logging
import os
import sys
import urllib.request

import opentracing
from flask import Flask, request
from jaeger_client import Config
from opentracing import Format
from opentracing.ext import tags

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("jaeger_legacy_app")

config = Config(
    config={
        "sampler": {"type": "const", "param": 1},
        "local_agent": {"reporting_host": "127.0.0.1", "reporting_port": int(os.environ.get("JAEGER_AGENT_PORT", "6831"))},
        "reporter_flush_interval": 0.1,
        "logging": True,
    },
    service_name=os.environ.get("JAEGER_SERVICE_NAME", "legacy-orders"),
    validate=True,
)
tracer = config.initialize_tracer()
# jaeger-client's rule: only the first initialize_tracer() does anything.
assert config.initialize_tracer() is None
assert opentracing.global_tracer() is tracer
app = Flask(__name__)


def describe(span) -> dict:
    context = span.context
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        # jaeger-client's spans know their parent and flags; meshlens's spans say it over OTLP.
        "parent_id": f"{span.parent_id:016x}" if getattr(span, "parent_id", None) else None,
        "flags": getattr(context, "flags", None),
        "tracer": type(tracer).__module__,
    }


@app.route("/health")
def health():
    return "ok"


@app.route("/work")
def work():
    incoming = tracer.extract(Format.HTTP_HEADERS, dict(request.headers))
    with tracer.start_active_span("handle-work", child_of=incoming,
                                  tags={tags.SPAN_KIND: tags.SPAN_KIND_RPC_SERVER, "component": "legacy"}) as scope:
        span = scope.span
        span.set_tag("customer.id", 42)
        span.set_tag("order.lines", ["a", "b"])
        span.log_kv({"event": "cache-miss", "key": "order:42"})
        span.set_baggage_item("tenant", "acme")
        result = {"server": describe(span), "baggage": span.get_baggage_item("caller")}
        if request.args.get("fail"):
            try:
                with tracer.start_active_span("risky-step"):
                    raise ValueError("stock service said no")
            except ValueError:
                span.set_tag(tags.ERROR, True)
                span.log_kv({"event": "error", "error.object": sys.exc_info()[1], "message": "order rejected"})
        downstream = request.args.get("next")
        if downstream:
            with tracer.start_active_span("call-next", tags={tags.SPAN_KIND: tags.SPAN_KIND_RPC_CLIENT,
                                                             tags.HTTP_URL: downstream}) as call:
                headers: dict = {}
                tracer.inject(call.span.context, Format.HTTP_HEADERS, headers)
                with urllib.request.urlopen(urllib.request.Request(downstream, headers=headers), timeout=10) as response:
                    result["next"] = json.loads(response.read() or b"null")
                result["call"] = describe(call.span)
                result["sent"] = headers
    return result


if __name__ == "__main__":
    app.run("127.0.0.1", int(sys.argv[1]), threaded=True)
