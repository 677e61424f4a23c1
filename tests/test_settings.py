"""Settings: keyword arguments > environment > defaults; bad values warn and fall back."""

from __future__ import annotations

import logging

import pytest

from meshlens.settings import DEFAULT_METRICS_PORT, Settings, load_settings, settings_table


def test_defaults_follow_the_specification():
    settings = load_settings({})
    assert settings.sampler == "parentbased_always_on"
    assert settings.otlp_protocol == "http/protobuf"
    assert settings.propagators == ("tracecontext", "baggage", "b3multi", "jaeger")  # meshlens: the mixed fleet
    assert settings.metrics_port == DEFAULT_METRICS_PORT == 9464
    assert settings.metric_label_set_limit == 2000
    assert settings.span_queue_size == 2048
    assert settings.span_batch_size == 128  # meshlens's choice, smaller than the SDK's 512
    assert not settings.sdk_disabled


def test_environment_is_read_and_keywords_win():
    env = {
        "OTEL_SERVICE_NAME": "orders",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-tenant=shop",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,team=payments",
        "MESHLENS_METRICS_PORT": "0",
    }
    settings = load_settings(env, service_name="orders-v2")
    assert settings.service_name == "orders-v2"
    assert settings.sampler == "parentbased_traceidratio"
    assert settings.sampler_arg == 0.25
    assert settings.otlp_protocol == "grpc"
    assert dict(settings.otlp_headers) == {"authorization": "Bearer abc", "x-tenant": "shop"}
    assert dict(settings.resource_attributes)["team"] == "payments"
    assert settings.metrics_port == 0


def test_signal_specific_variable_wins_over_the_general_one():
    settings = load_settings({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert settings.otlp_protocol == "http/protobuf"


@pytest.mark.parametrize(
    ("variable", "value", "field", "default"),
    [
        ("OTEL_TRACES_SAMPLER_ARG", "abc", "sampler_arg", 1.0),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "sampler_arg", 1.0),
        ("MESHLENS_METRICS_PORT", "-1", "metrics_port", 9464),
        ("MESHLENS_METRICS_PORT", "70000", "metrics_port", 9464),
        ("OTEL_TRACES_SAMPLER", "sometimes", "sampler", "parentbased_always_on"),
        ("OTEL_SDK_DISABLED", "maybe", "sdk_disabled", False),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue", "otlp_headers", ()),
        ("MESHLENS_METRIC_LABEL_SET_LIMIT", "0", "metric_label_set_limit", 2000),
    ],
)
def test_a_bad_value_warns_once_naming_variable_value_and_default(variable, value, field, default, caplog):
    with caplog.at_level(logging.WARNING, logger="meshlens"):
        settings = load_settings({variable: value})
    assert getattr(settings, field) == default
    warnings = [r.getMessage() for r in caplog.records if r.name == "meshlens"]
    assert len(warnings) == 1
    assert variable in warnings[0] and repr(value) in warnings[0] and repr(default) in warnings[0]


def test_a_bad_keyword_value_warns_too(caplog):
    with caplog.at_level(logging.WARNING, logger="meshlens"):
        settings = load_settings({}, metrics_port="nope")
    assert settings.metrics_port == 9464
    assert "metrics_port" in caplog.text


def test_an_unknown_keyword_is_a_programming_error():
    with pytest.raises(TypeError, match="metrics_prot"):
        load_settings({}, metrics_prot=1)


def test_settings_are_frozen():
    settings = load_settings({})
    with pytest.raises(AttributeError):
        settings.metrics_port = 1  # type: ignore[misc]
    assert isinstance(settings.replace(metrics_port=1), Settings)


def test_every_setting_is_documented_with_its_variable():
    table = settings_table()
    for variable in ("OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER_ARG", "MESHLENS_METRICS_PORT",
                     "MESHLENS_METRIC_LABEL_SET_LIMIT", "MESHLENS_MULTIPROC_DIR"):
        assert f"`{variable}`" in table
    own = [line for line in table.splitlines() if line.startswith("| `") and "MESHLENS" in line.split("|")[1]]
    assert all("`MESHLENS_" in line.split("|")[1] for line in own)
