"""meshlens's propagator: real peers' headers, precedence, W3C conformance, hostile input."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, trace
from opentelemetry.context import Context, set_value
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from meshlens import _setup
from meshlens.propagation import (
    FORMATS,
    MAX_BAGGAGE_ENTRIES,
    MAX_DEBUG_ID_CHARS,
    MAX_HEADER_BYTES,
    SPAN_BAGGAGE_KEY,
    JaegerDebugSampler,
    MeshlensPropagator,
    baggage_properties,
    jaeger_debug_id,
    parse_baggage_members,
    parse_jaeger_baggage,
    parse_traceparent,
    parse_tracestate,
    request_id,
)
from meshlens.settings import Settings

DEFAULT = MeshlensPropagator(Settings().propagators)
ALL = MeshlensPropagator(FORMATS)

W3C_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
W3C_SPAN = "00f067aa0ba902b7"
B3_TRACE = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN = "e457b5a2e4d86bd1"
JAEGER_64 = "1a2b3c4d5e6f7a8b"


def parent(context: Context) -> SpanContext:
    return trace.get_current_span(context).get_span_context()


def ids(context: Context) -> tuple[str, str, bool] | None:
    found = parent(context)
    if not found.is_valid:
        return None
    return f"{found.trace_id:032x}", f"{found.span_id:016x}", found.trace_flags.sampled


# --- headers as real peers send them --------------------------------------------

# Envoy/Istio with B3 multi (the headers Istio's docs list for applications to forward).
ENVOY_B3_MULTI = {
    "x-request-id": "3f0fbc9e-6f5a-9d8c-a1b2-6e9f2c1d4b7a",
    "x-b3-traceid": B3_TRACE,
    "x-b3-spanid": B3_SPAN,
    "x-b3-parentspanid": "05e3ac9a4f6e3b90",
    "x-b3-sampled": "1",
}
ENVOY_B3_SINGLE = {
    "x-request-id": "3f0fbc9e-6f5a-9d8c-a1b2-6e9f2c1d4b7a",
    "b3": f"{B3_TRACE}-{B3_SPAN}-1-05e3ac9a4f6e3b90",
}


def test_envoy_b3_multi_with_request_id():
    context = DEFAULT.extract(ENVOY_B3_MULTI)
    assert ids(context) == (B3_TRACE, B3_SPAN, True)
    assert request_id(context) == "3f0fbc9e-6f5a-9d8c-a1b2-6e9f2c1d4b7a"


def test_envoy_b3_single_with_request_id():
    context = DEFAULT.extract(ENVOY_B3_SINGLE)
    assert ids(context) == (B3_TRACE, B3_SPAN, True)
    assert request_id(context) == "3f0fbc9e-6f5a-9d8c-a1b2-6e9f2c1d4b7a"


def test_b3_64_bit_trace_id_and_sampling_values():
    assert ids(DEFAULT.extract({"b3": f"{JAEGER_64}-{B3_SPAN}-0"})) == ("0" * 16 + JAEGER_64, B3_SPAN, False)
    assert ids(DEFAULT.extract({"b3": f"{B3_TRACE}-{B3_SPAN}-d"}))[2] is True
    assert ids(DEFAULT.extract({"x-b3-traceid": B3_TRACE, "x-b3-spanid": B3_SPAN, "x-b3-flags": "1"}))[2] is True
    assert ids(DEFAULT.extract({"b3": "0"})) is None  # sampling decision only: no parent
    assert ids(DEFAULT.extract({"b3": f"{'0' * 32}-{B3_SPAN}-1"})) is None  # all-zero id
    assert ids(DEFAULT.extract({"b3": f"{B3_TRACE}-{B3_SPAN}"}))[2] is True  # no decision: read as sampled
    assert ids(DEFAULT.extract({"b3": f"{B3_TRACE.upper()}-{B3_SPAN}-1"}))[0] == B3_TRACE
    for bad in [f"{B3_TRACE}-{B3_SPAN}-1-{B3_SPAN}-x", f"{B3_TRACE}x-{B3_SPAN}-1", f"{B3_TRACE[:20]}-{B3_SPAN}-1",
                f"{B3_TRACE}-{B3_SPAN[:8]}-1", f"{B3_TRACE}", f"0x{B3_TRACE[2:]}-{B3_SPAN}-1"]:
        assert ids(DEFAULT.extract({"b3": bad})) is None, bad
    assert ids(DEFAULT.extract({"x-b3-traceid": B3_TRACE})) is None  # no span id
    assert ids(DEFAULT.extract({"x-b3-traceid": B3_TRACE, "x-b3-spanid": "0" * 16})) is None


@pytest.mark.parametrize("header", [
    f"{JAEGER_64}:{JAEGER_64}:0:1",
    f"{JAEGER_64}%3A{JAEGER_64}%3A0%3A1",  # URL-encoded, as jaeger-client accepts
    f"{JAEGER_64}%3a{JAEGER_64}%3a0%3a1",
    f"{'0' * 16}{JAEGER_64}:{JAEGER_64}:0:1",
    f"{JAEGER_64.upper()}:{JAEGER_64}:0:1",
    f"{JAEGER_64}:{JAEGER_64}:0:3",  # debug + sampled
])
def test_jaeger_client_uber_trace_id(header):
    assert ids(DEFAULT.extract({"uber-trace-id": header})) == ("0" * 16 + JAEGER_64, JAEGER_64, True)


def test_jaeger_short_ids_unsampled_and_invalid():
    assert ids(DEFAULT.extract({"uber-trace-id": "abc:def:0:0"})) == (f"{0xabc:032x}", f"{0xdef:016x}", False)
    for bad in ["0x1f:2:0:1", "+1f:2:0:1", "1_f:2:0:1", "1:2:0", "1:2:0:1:5", "0:2:0:1", "1:0:0:1",
                "f" * 33 + ":2:0:1", "1:" + "f" * 17 + ":0:1", "1:2:0:100", ""]:
        assert ids(DEFAULT.extract({"uber-trace-id": bad})) is None, bad


def test_jaeger_baggage_merges_with_w3c_baggage_and_w3c_wins():
    carrier = {
        "uber-trace-id": f"{JAEGER_64}:{JAEGER_64}:0:1",
        "uberctx-tenant": "acme",
        "uberctx-saga": "from%20jaeger",
        "baggage": "saga=from-w3c,user=42;prop=1",
    }
    assert baggage.get_all(DEFAULT.extract(carrier)) == {"tenant": "acme", "saga": "from-w3c", "user": "42"}


# --- precedence ----------------------------------------------------------------

W3C = {"traceparent": f"00-{W3C_TRACE}-{W3C_SPAN}-01"}
B3_SINGLE = {"b3": f"{B3_TRACE}-{B3_SPAN}-1"}
B3_MULTI = {"x-b3-traceid": "a" * 32, "x-b3-spanid": "b" * 16, "x-b3-sampled": "0"}
JAEGER = {"uber-trace-id": f"{JAEGER_64}:{JAEGER_64}:0:1"}


@pytest.mark.parametrize(("carrier", "winner"), [
    ({**JAEGER, **B3_MULTI, **B3_SINGLE, **W3C}, W3C_TRACE),
    ({**JAEGER, **B3_MULTI, **B3_SINGLE}, B3_TRACE),
    ({**JAEGER, **B3_MULTI}, "a" * 32),
    (JAEGER, "0" * 16 + JAEGER_64),
    # A malformed higher format falls through to the next valid one.
    ({**JAEGER, **B3_MULTI, "b3": "garbage", "traceparent": "00-xyz"}, "a" * 32),
    ({**JAEGER, "traceparent": f"00-{W3C_TRACE.upper()}-{W3C_SPAN}-01"}, "0" * 16 + JAEGER_64),
])
def test_precedence_w3c_then_b3_single_then_b3_multi_then_jaeger(carrier, winner):
    # Dict order must not matter: the reverse order gives the same winner.
    for ordered in (carrier, dict(reversed(list(carrier.items())))):
        assert ids(DEFAULT.extract(ordered))[0] == winner


def test_configured_formats_limit_extraction():
    w3c_only = MeshlensPropagator(("tracecontext",))
    assert ids(w3c_only.extract({**JAEGER, **B3_SINGLE})) is None
    assert ids(MeshlensPropagator(("b3",)).extract(B3_MULTI))[0] == "a" * 32  # either B3 name reads both
    assert MeshlensPropagator(("none",)).extract({**W3C, "x-request-id": "r"}) == Context()


def test_other_entry_points_come_after_meshlens_formats():
    class LastWins:
        fields = frozenset()

        def extract(self, carrier, context=None, getter=None):
            span = NonRecordingSpan(SpanContext(1, 2, is_remote=True))
            return trace.set_span_in_context(span, context)

        def inject(self, carrier, context=None, setter=None):
            carrier["other"] = "1"

    prop = MeshlensPropagator(("tracecontext",), [LastWins()])
    assert ids(prop.extract(W3C))[0] == W3C_TRACE
    assert ids(prop.extract({}))[0] == f"{1:032x}"
    carrier: dict[str, str] = {}
    prop.inject(carrier, prop.extract(W3C))
    assert carrier["other"] == "1" and "traceparent" in carrier


def test_setup_builds_meshlens_propagator_with_entry_points(caplog):
    built = _setup._propagator(("tracecontext", "b3", "nosuchformat", "none"))
    assert isinstance(built, MeshlensPropagator)
    assert built.names == ("tracecontext", "b3")
    assert "nosuchformat" in caplog.text


# --- inject ----------------------------------------------------------------------

def test_inject_every_default_format_naming_the_same_span():
    span = SpanContext(int(W3C_TRACE, 16), int(W3C_SPAN, 16), is_remote=False,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=TraceState([("congo", "t61rcWkgMzE")]))
    context = trace.set_span_in_context(NonRecordingSpan(span))
    context = baggage.set_baggage("tenant", "acme corp", context)
    context = DEFAULT.extract({"x-request-id": "req-1"}, context)
    carrier: dict[str, str] = {}
    DEFAULT.inject(carrier, context)
    assert carrier == {
        "traceparent": f"00-{W3C_TRACE}-{W3C_SPAN}-01",
        "tracestate": "congo=t61rcWkgMzE",
        "x-b3-traceid": W3C_TRACE, "x-b3-spanid": W3C_SPAN, "x-b3-sampled": "1",
        "uber-trace-id": f"{W3C_TRACE}:{W3C_SPAN}:0:01",
        "baggage": "tenant=acme%20corp",
        "uberctx-tenant": "acme%20corp",
        "x-request-id": "req-1",
    }
    assert DEFAULT.fields == set(carrier) - {"uberctx-tenant"}
    # What meshlens writes, meshlens (and so the next hop) reads back as the same context.
    back = DEFAULT.extract(carrier)
    assert ids(back) == (W3C_TRACE, W3C_SPAN, True)
    assert baggage.get_all(back) == {"tenant": "acme corp"}
    single: dict[str, str] = {}
    MeshlensPropagator(("b3",)).inject(single, context)
    assert single["b3"] == f"{W3C_TRACE}-{W3C_SPAN}-1"


def test_inject_without_span_writes_only_baggage_and_request_id():
    context = DEFAULT.extract({"x-request-id": "req-2", "baggage": "k=v"})
    carrier: dict[str, str] = {}
    DEFAULT.inject(carrier, context)
    assert carrier == {"baggage": "k=v", "uberctx-k": "v", "x-request-id": "req-2"}


# --- W3C Trace Context level 1 ------------------------------------------------------

@pytest.mark.parametrize(("header", "expected"), [
    (f"00-{W3C_TRACE}-{W3C_SPAN}-01", (int(W3C_TRACE, 16), int(W3C_SPAN, 16), True)),
    (f"00-{W3C_TRACE}-{W3C_SPAN}-00", (int(W3C_TRACE, 16), int(W3C_SPAN, 16), False)),
    (f" \t00-{W3C_TRACE}-{W3C_SPAN}-01 \t", (int(W3C_TRACE, 16), int(W3C_SPAN, 16), True)),  # OWS
    (f"00-{W3C_TRACE}-{W3C_SPAN}-09", (int(W3C_TRACE, 16), int(W3C_SPAN, 16), True)),  # unknown flag bits
    # Future versions: parsed as 00, longer only after a '-'.
    (f"cc-{W3C_TRACE}-{W3C_SPAN}-01", (int(W3C_TRACE, 16), int(W3C_SPAN, 16), True)),
    (f"cc-{W3C_TRACE}-{W3C_SPAN}-01-what-the-future-will-be-like", (int(W3C_TRACE, 16), int(W3C_SPAN, 16), True)),
    (f"cc-{W3C_TRACE}-{W3C_SPAN}-01.what", None),
    (f"ff-{W3C_TRACE}-{W3C_SPAN}-01", None),
    (f"00-{W3C_TRACE}-{W3C_SPAN}-01-extra", None),  # version 00 is exactly 55 chars
    (f"00-{W3C_TRACE.upper()}-{W3C_SPAN}-01", None),
    (f"00-{W3C_TRACE}-{W3C_SPAN.upper()}-01", None),
    (f"0A-{W3C_TRACE}-{W3C_SPAN}-01", None),
    (f"00-{'0' * 32}-{W3C_SPAN}-01", None),
    (f"00-{W3C_TRACE}-{'0' * 16}-01", None),
    (f"00-{W3C_TRACE}-{W3C_SPAN}-0x", None),
    (f"00-{W3C_TRACE[:-1]}-{W3C_SPAN}-01", None),
    (f"00_{W3C_TRACE}_{W3C_SPAN}_01", None),
    ("", None),
])
def test_traceparent(header, expected):
    assert parse_traceparent(header) == expected


def test_repeated_traceparent_is_invalid_and_tracestate_needs_a_traceparent():
    assert ids(DEFAULT.extract({"traceparent": [W3C["traceparent"], W3C["traceparent"]]})) is None
    assert ids(DEFAULT.extract({"tracestate": "a=b"})) is None


def ts(header: str | list[str]) -> list[tuple[str, str]]:
    context = DEFAULT.extract({**W3C, "tracestate": header})
    return list(parent(context).trace_state.items())


def test_tracestate_spec_examples():
    assert ts("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]
    assert ts(["rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE"]) == ts("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    assert ts("fw529a3039@dt=1, tenant@vendor=x ,,\t a=1\t") == [("fw529a3039@dt", "1"), ("tenant@vendor", "x"),
                                                                 ("a", "1")]


def test_tracestate_keeps_valid_members_and_drops_invalid_ones():
    # Stock OpenTelemetry drops all of it when one member is bad.
    header = "rojo=00f067aa0ba902b7,foo =1,Upper=1,1abc=x,bad=va,lue,v=a=b,=x,novalue,k=trailing ,ok=yes"
    # "bad=va" is a valid member before the stray "lue"; the blank after "trailing" is list whitespace.
    assert ts(header) == [("rojo", "00f067aa0ba902b7"), ("bad", "va"), ("k", "trailing"), ("ok", "yes")]


def test_tracestate_key_and_value_grammar():
    assert parse_tracestate("a" * 256 + "=1").get("a" * 256) == "1"
    assert len(parse_tracestate("a" * 257 + "=1")) == 0
    assert parse_tracestate("t" * 241 + "@" + "s" * 14 + "=1").get("t" * 241 + "@" + "s" * 14) == "1"
    assert len(parse_tracestate("t" * 242 + "@s=1,t@" + "s" * 15 + "=1,@s=1,t@=1,t@1s=1")) == 0
    assert parse_tracestate("k=" + "v" * 256).get("k") == "v" * 256
    assert len(parse_tracestate("k=" + "v" * 257)) == 0
    assert parse_tracestate("k= leading space,j=x!y").get("j") == "x!y"
    assert len(parse_tracestate("k=caf\u00e9,j=\x00,l=\x7f")) == 0


def test_tracestate_duplicates_keep_first_and_limit_is_32():
    assert ts("a=1,b=2,a=3") == [("a", "1"), ("b", "2")]
    members = [f"k{i}=v" for i in range(40)]
    assert ts(",".join(members[:32])) == [(f"k{i}", "v") for i in range(32)]
    assert ts(",".join(members)) == [(f"k{i}", "v") for i in range(32)]
    # Past 32, members over 128 characters go first.
    long = [f"l{i}=" + "x" * 130 for i in range(3)]
    assert ts(",".join(long + members[:32])) == [(f"k{i}", "v") for i in range(32)]
    assert len(ts(",".join(long + members[:30]))) == 32


def test_tracestate_round_trips_through_inject():
    context = DEFAULT.extract({**W3C, "tracestate": "rojo=00f067aa0ba902b7,bad key=1,congo=t61rcWkgMzE"})
    carrier: dict[str, str] = {}
    DEFAULT.inject(carrier, context)
    assert carrier["tracestate"] == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


# --- hostile input -----------------------------------------------------------------

HEADERS = ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags",
           "uber-trace-id", "uberctx-k", "baggage", "x-request-id", "jaeger-debug-id", "jaeger-baggage"]
PATHOLOGICAL = [" " * 65536, "\t," * 32768, "a=" * 32768, "-" * 65536, ":" * 65536, "%3A" * 21845,
                "0" * 65536, "f" * 65536, "\x00" * 65536, "\u00e9" * 65536, "a@" * 32768, ";=" * 32768]


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("value", PATHOLOGICAL, ids=lambda v: repr(v[:4]))
def test_oversized_pathological_values_are_rejected_by_length(header, value):
    context = ALL.extract({**(W3C if header == "tracestate" else {}), header: value})
    assert ids(context) in (None, (W3C_TRACE, W3C_SPAN, True))
    assert baggage.get_all(context) == {}
    assert request_id(context) is None
    if header == "tracestate":
        assert len(parent(context).trace_state) == 0


def test_values_just_under_the_limit_are_parsed_linearly():
    # 8 KiB of blanks is what makes OpenTelemetry's baggage parser quadratic; here it is one pass.
    for value in (" " * MAX_HEADER_BYTES, "a=1" + " " * (MAX_HEADER_BYTES - 4) + "x", "\t" * MAX_HEADER_BYTES):
        started = time.perf_counter()
        for _ in range(20):
            ALL.extract({"baggage": value, **W3C, "tracestate": value, "b3": value, "uber-trace-id": value})
        # Generous (stock takes over 100 ms per call on these); only a quadratic parser fails it.
        assert time.perf_counter() - started < 1.0


def test_getter_surprises_cost_the_context_not_the_request():
    class Broken:
        def get(self, carrier, key):
            raise RuntimeError("boom")

        def keys(self, carrier):
            raise RuntimeError("boom")

    assert ALL.extract({}, getter=Broken()) == Context()
    assert ids(ALL.extract({"traceparent": b"00-bytes"})) is None
    assert ids(ALL.extract({"traceparent": [None]})) is None


values = st.one_of(
    st.text(max_size=64),
    st.text(alphabet="0123456789abcdefABCDEF-:%3@=,; \t", max_size=128),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.integers(MAX_HEADER_BYTES - 2, MAX_HEADER_BYTES + 1024).map(lambda n: "a=1," * (n // 4)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(HEADERS), values, max_size=6))
def test_fuzz_every_extractor(carrier):
    context = ALL.extract(carrier)
    found = parent(context)
    assert found == trace.INVALID_SPAN_CONTEXT or found.is_valid
    assert len(found.trace_state) <= 32
    assert len(baggage.get_all(context)) <= 180
    assert len(request_id(context) or "") <= 256
    ALL.inject({}, context)  # what was extracted can always be written


class _AskedFor:
    """A getter that notes which headers extraction looks up."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def get(self, carrier, key):
        self.asked.add(key)
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier):
        return list(carrier)


@pytest.mark.parametrize("names", [FORMATS, Settings().propagators, ("tracecontext",), ("b3multi",), ("jaeger",),
                                   ("baggage",), ()], ids=lambda names: ",".join(names) or "none")
def test_headers_read_are_exactly_what_a_request_without_headers_is_asked_for(names):
    """A server skips extraction when none of ``headers_read()`` is present: the list must be
    every header looked up when none is there (the rest are looked up only beside one)."""
    propagator = MeshlensPropagator(names)
    getter = _AskedFor()
    context = Context()
    assert propagator.extract({}, context, getter) is context
    assert propagator.headers_read() == frozenset(getter.asked)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*HEADERS, "x-other", "uberctx-k2"]), values, max_size=4))
def test_a_carrier_without_any_header_read_extracts_nothing(carrier):
    headers = ALL.headers_read()
    context = Context()
    if headers.isdisjoint(carrier):
        assert ALL.extract(carrier, context) is context


def test_other_propagators_make_the_headers_read_unknown():
    from opentelemetry.propagators.b3 import B3MultiFormat

    assert MeshlensPropagator(FORMATS, [B3MultiFormat()]).headers_read() is None


def test_nothing_retained_across_calls():
    carrier = {h: "x" * 4000 for h in HEADERS} | W3C | {"tracestate": "a=1," * 1000, "baggage": "k=v," * 1000}
    for _ in range(20):
        ALL.extract(carrier)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(300):  # each call parses ~60 KiB of headers: a leak of any of it would show
        ALL.extract(carrier)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename") if stat.size_diff > 0)
    assert grown < 64 * 1024


# --- Jaeger debug requests, jaeger-baggage, W3C baggage properties ---------------------------

def test_jaeger_debug_id_without_trace_context_marks_a_debug_request():
    context = DEFAULT.extract({"jaeger-debug-id": "ticket-4711"})
    assert ids(context) is None
    assert jaeger_debug_id(context) == "ticket-4711"
    # Beside a trace context it is ignored, as jaeger-client ignores it.
    assert jaeger_debug_id(DEFAULT.extract({**W3C, "jaeger-debug-id": "x"})) is None
    assert jaeger_debug_id(DEFAULT.extract({**JAEGER, "jaeger-debug-id": "x"})) is None
    for bad in ["", "\x00bad", "caf\u00e9", "x" * (MAX_DEBUG_ID_CHARS + 1)]:
        assert jaeger_debug_id(DEFAULT.extract({"jaeger-debug-id": bad})) is None, bad
    assert jaeger_debug_id(DEFAULT.extract({"jaeger-debug-id": ["a", "b"]})) is None  # repeated
    assert jaeger_debug_id(MeshlensPropagator(("tracecontext",)).extract({"jaeger-debug-id": "x"})) is None


def test_debug_flag_goes_out_again_only_on_sampled_spans():
    carrier: dict[str, str] = {}
    DEFAULT.inject(carrier, DEFAULT.extract({"uber-trace-id": f"{JAEGER_64}:{JAEGER_64}:0:3"}))
    assert carrier["uber-trace-id"] == f"{'0' * 16}{JAEGER_64}:{JAEGER_64}:0:03"
    assert carrier["traceparent"].endswith("-01")  # W3C has no debug flag: sampled only
    carrier = {}
    DEFAULT.inject(carrier, DEFAULT.extract({"uber-trace-id": f"{JAEGER_64}:{JAEGER_64}:0:1"}))
    assert carrier["uber-trace-id"].endswith(":01")
    carrier = {}
    DEFAULT.inject(carrier, DEFAULT.extract({"uber-trace-id": f"{JAEGER_64}:{JAEGER_64}:0:2"}))
    assert carrier["uber-trace-id"].endswith(":00")  # debug without sampled: not a sampled trace


def sampled_by(sampler, context, attributes=None):
    from opentelemetry.sdk.trace.sampling import Decision
    result = sampler.should_sample(context, 0x1234, "span", attributes=attributes)
    return result.decision is Decision.RECORD_AND_SAMPLE, dict(result.attributes or {})


def test_debug_sampler_forces_debug_requests_and_leaves_the_rest_to_the_delegate():
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    sampler = JaegerDebugSampler(ParentBased(ALWAYS_OFF))
    assert sampled_by(sampler, DEFAULT.extract({"jaeger-debug-id": "t-1"})) == (True, {"jaeger-debug-id": "t-1"})
    assert sampled_by(sampler, DEFAULT.extract({})) == (False, {})
    assert sampled_by(sampler, DEFAULT.extract({"uber-trace-id": f"{JAEGER_64}:{JAEGER_64}:0:3"})) == (True, {})
    assert sampled_by(JaegerDebugSampler(ALWAYS_OFF), DEFAULT.extract({"uber-trace-id": f"{JAEGER_64}:1:0:3"}))[0]
    # The debug bit without the sampled bit: jaeger-client does not sample it either.
    assert sampled_by(sampler, DEFAULT.extract({"uber-trace-id": f"{JAEGER_64}:{JAEGER_64}:0:2"}))[0] is False
    assert sampled_by(sampler, None, {"sampling.priority": 1, "k": "v"}) == (True, {"sampling.priority": 1, "k": "v"})
    assert sampled_by(sampler, None, {"sampling.priority": 0})[0] is False
    assert sampler.get_description().startswith("JaegerDebug{ParentBased{root:AlwaysOffSampler")


def test_jaeger_baggage_header_as_jaeger_client_reads_it():
    assert parse_jaeger_baggage("k1=v1, k2 = v2,k3=a%20b") == [("k1", "v1"), ("k2", "v2"), ("k3", "a b")]
    # Exactly one '=' per member, as jaeger-client requires; a bad member costs only itself.
    assert parse_jaeger_baggage("a=1=2,b,=3,c=ok,bad key=1,d=\x01") == [("c", "ok")]
    assert len(parse_jaeger_baggage(",".join(f"k{i}=v" for i in range(500)))) == MAX_BAGGAGE_ENTRIES
    context = DEFAULT.extract({"jaeger-baggage": "tenant=edge,region=eu"})
    assert ids(context) is None  # baggage without a trace
    assert baggage.get_all(context) == {"tenant": "edge", "region": "eu"}


def test_baggage_precedence_jaeger_baggage_then_uberctx_then_w3c():
    carrier = {**JAEGER, "jaeger-baggage": "a=jb,b=jb,c=jb", "uberctx-b": "uber", "uberctx-c": "uber",
               "baggage": "c=w3c"}
    assert baggage.get_all(DEFAULT.extract(carrier)) == {"a": "jb", "b": "uber", "c": "w3c"}


def test_w3c_baggage_properties_are_kept_and_written_again():
    assert parse_baggage_members("user=42;prop=1; flag ;bad key=x;v=%20, plain=1") == [
        ("user", "42", "prop=1;flag;v=%20"), ("plain", "1", "")]
    context = DEFAULT.extract({"baggage": "user=42;prop=1;flag,tenant=acme"})
    assert baggage.get_all(context) == {"user": "42", "tenant": "acme"}
    assert baggage_properties(context) == {"user": "prop=1;flag"}
    carrier: dict[str, str] = {}
    DEFAULT.inject(carrier, context)
    assert carrier["baggage"] == "user=42;prop=1;flag,tenant=acme"
    assert carrier["uberctx-user"] == "42"  # Jaeger's baggage has no properties
    # An entry given a new value has lost the properties of the old one.
    changed = baggage.set_baggage("user", "43", context)
    assert baggage_properties(changed) == {}
    carrier = {}
    DEFAULT.inject(carrier, changed)
    assert carrier["baggage"] == "user=43,tenant=acme"


def test_span_baggage_goes_out_with_the_context_baggage_and_wins():
    context = DEFAULT.extract({**W3C, "baggage": "a=ctx,b=ctx"})
    context = set_value(SPAN_BAGGAGE_KEY, {"b": "span", "c": "span"}, context)
    carrier: dict[str, str] = {}
    DEFAULT.inject(carrier, context)
    assert carrier["baggage"] == "a=ctx,b=span,c=span"
    assert carrier["uberctx-c"] == "span"


NEW_HEADERS = ["jaeger-debug-id", "jaeger-baggage", "baggage", "uber-trace-id"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(NEW_HEADERS), st.one_of(
    values,
    st.text(alphabet="ab=,;% \t\x00\u00e9", max_size=256),
    st.integers(MAX_HEADER_BYTES - 8, MAX_HEADER_BYTES + 64).map(lambda n: ("k=v;p=1," * n)[:n]),
), max_size=4))
def test_fuzz_jaeger_debug_and_baggage_headers(carrier):
    context = ALL.extract(carrier)
    assert len(jaeger_debug_id(context) or "") <= MAX_DEBUG_ID_CHARS
    entries = baggage.get_all(context)
    assert len(entries) <= 2 * MAX_BAGGAGE_ENTRIES  # jaeger-baggage and W3C, each bounded
    assert sum(len(key) + len(str(value)) for key, value in entries.items()) <= 2 * MAX_HEADER_BYTES
    properties = baggage_properties(context)
    assert set(properties) <= set(entries)
    assert sum(map(len, properties.values())) <= MAX_HEADER_BYTES
    out: dict[str, str] = {}
    ALL.inject(out, context)
    assert len(out.get("baggage", "")) <= MAX_HEADER_BYTES
    assert ALL.extract(out) is not None  # what meshlens writes it reads back without raising
