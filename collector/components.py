"""Collector components and pipelines, and how a component's type maps to its Go module.

A config is assembled from pipelines only: the receivers, processors and exporters sections are
collected from the pipelines that use them, so a defined component is always used and a pipeline
can only name a defined component. The order rule (``memory_limiter`` first, ``batch`` last) is
checked when a pipeline is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Kind(str, Enum):
    """A component kind: its section of the config and the suffix of its Go module."""

    RECEIVER = "receiver"
    PROCESSOR = "processor"
    EXPORTER = "exporter"
    EXTENSION = "extension"
    CONNECTOR = "connector"

    @property
    def section(self) -> str:
        return f"{self.value}s"


# Types whose Go module is not `<type without underscores><kind>` (nor `<type without underscores>`):
# since collector v0.144 the OTLP exporters are configured as `otlp_grpc`/`otlp_http`, while their
# modules keep the old names.
MODULE_ALIASES: dict[tuple[Kind, str], str] = {
    (Kind.EXPORTER, "otlp_grpc"): "otlpexporter",
    (Kind.EXPORTER, "otlp_http"): "otlphttpexporter",
}

FIRST_PROCESSOR = "memory_limiter"
"""Refuses data before anything else spends memory on it."""
LAST_PROCESSOR = "batch"
"""Batches what the other processors let through, right before the exporters."""


def module_candidates(kind: Kind, component_type: str) -> tuple[str, ...]:
    """The last path element(s) of the Go module that provides a component type.

    The collector's convention is the type without underscores plus the kind
    (``memory_limiter`` -> ``memorylimiterprocessor``); a few modules drop the kind
    (``file_storage`` -> ``filestorage``), and ``MODULE_ALIASES`` lists the renamed ones.
    """
    if (kind, component_type) in MODULE_ALIASES:
        return (MODULE_ALIASES[kind, component_type],)
    bare = component_type.replace("_", "")
    return (f"{bare}{kind.value}", bare)


def component_type(component_id: str) -> str:
    """``otlp_grpc/traces`` -> ``otlp_grpc``: the part before the optional ``/name``."""
    return component_id.split("/", 1)[0]


@dataclass(frozen=True)
class Component:
    """One configured component: ``type[/name]`` and its settings."""

    kind: Kind
    type: str
    config: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def id(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type


@dataclass(frozen=True)
class Pipeline:
    """A pipeline of one signal: receivers -> processors in order -> exporters."""

    signal: str
    receivers: tuple[Component, ...]
    processors: tuple[Component, ...]
    exporters: tuple[Component, ...]

    def __post_init__(self) -> None:
        for kind, members in (
            (Kind.RECEIVER, self.receivers),
            (Kind.PROCESSOR, self.processors),
            (Kind.EXPORTER, self.exporters),
        ):
            wrong = [member.id for member in members if member.kind is not kind]
            if wrong:
                raise ValueError(f"{self.signal} pipeline: {wrong} are not {kind.section}")
        if not self.receivers or not self.exporters:
            raise ValueError(f"{self.signal} pipeline needs at least one receiver and one exporter")
        types = [processor.type for processor in self.processors]
        if types and (types[0] != FIRST_PROCESSOR or types[-1] != LAST_PROCESSOR):
            raise ValueError(f"{self.signal} pipeline: processors {types} must start with "
                             f"{FIRST_PROCESSOR} and end with {LAST_PROCESSOR}")  # fmt: skip


def assemble(
    pipelines: tuple[Pipeline, ...],
    extensions: tuple[Component, ...],
    telemetry: Mapping[str, Any],
) -> dict[str, Any]:
    """The collector config: sections from the pipelines' components, then ``service``."""
    config: dict[str, Any] = {}
    for kind in (Kind.EXTENSION, Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER):
        config[kind.section] = {}
    for extension in extensions:
        config[Kind.EXTENSION.section][extension.id] = dict(extension.config)
    for pipeline in pipelines:
        for member in (*pipeline.receivers, *pipeline.processors, *pipeline.exporters):
            section = config[member.kind.section]
            if section.setdefault(member.id, dict(member.config)) != dict(member.config):
                raise ValueError(f"{member.id} is configured twice, differently")
    config["service"] = {
        "extensions": [extension.id for extension in extensions],
        "pipelines": {
            pipeline.signal: {
                "receivers": [member.id for member in pipeline.receivers],
                "processors": [member.id for member in pipeline.processors],
                "exporters": [member.id for member in pipeline.exporters],
            }
            for pipeline in pipelines
        },
        "telemetry": dict(telemetry),
    }
    return config
