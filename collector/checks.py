"""Checks of a rendered collector config, against the otelcol-contrib component list and schemas.

Used by the tests on the configs the chart renders, and available to ``meshlens build``. Each check
returns the problems it found as sentences (empty: none), so a caller can report them all at once.

- ``check_pipelines``: every pipeline names only defined components, ``memory_limiter`` comes first
  and ``batch`` last, every receiver and exporter is used, the service's extensions are defined.
- ``check_components``: every component type is provided by a module of the distribution's
  manifest (``otelcol-contrib-manifest.yaml``).
- ``check_core_schemas``: the components that have a schema in the collector's own generated
  ``config.schema.yaml`` files (otlp receiver and exporters, batch, memory_limiter, ...) validate
  against it, with unknown keys rejected. Those files use the collector's own cross-file
  references (``/config/configgrpc.client_config``, ``./internal.timeout_config``, bare local names),
  which ``CoreSchemas`` resolves into plain JSON Schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from meshlens_collector.components import FIRST_PROCESSOR, LAST_PROCESSOR, Kind, component_type, module_candidates

PIPELINE_SECTIONS = (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER)
_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def check_pipelines(config: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    service = config.get("service") or {}
    pipelines = service.get("pipelines") or {}
    if not pipelines:
        problems.append("service.pipelines is empty")
    connectors = set(config.get(Kind.CONNECTOR.section) or {})
    used: dict[Kind, set[str]] = {kind: set() for kind in PIPELINE_SECTIONS}
    for name, pipeline in pipelines.items():
        for kind in PIPELINE_SECTIONS:
            defined = set(config.get(kind.section) or {})
            # A connector is an exporter of one pipeline and a receiver of another.
            if kind is not Kind.PROCESSOR:
                defined |= connectors
            members = pipeline.get(kind.section) or []
            used[kind].update(members)
            for member in members:
                if member not in defined:
                    problems.append(f"pipeline {name}: {kind.value} {member} is not defined in {kind.section}")
            if kind is not Kind.PROCESSOR and not members:
                problems.append(f"pipeline {name} has no {kind.section}")
        processors = [component_type(member) for member in pipeline.get(Kind.PROCESSOR.section) or []]
        if processors and processors[0] != FIRST_PROCESSOR:
            problems.append(f"pipeline {name}: the first processor is {processors[0]}, not {FIRST_PROCESSOR}")
        if processors and processors[-1] != LAST_PROCESSOR:
            problems.append(f"pipeline {name}: the last processor is {processors[-1]}, not {LAST_PROCESSOR}")
    for kind in (Kind.RECEIVER, Kind.EXPORTER, Kind.PROCESSOR):
        for unused in sorted(set(config.get(kind.section) or {}) - used[kind]):
            problems.append(f"{kind.value} {unused} is defined but no pipeline uses it")
    for extension in service.get("extensions") or []:
        if extension not in (config.get(Kind.EXTENSION.section) or {}):
            problems.append(f"service.extensions names {extension}, which is not defined in extensions")
    return problems


@cache
def manifest_modules(manifest: Path) -> dict[Kind, frozenset[str]]:
    """The last path element of every module in a collector builder manifest, by kind."""
    data = yaml.safe_load(manifest.read_text())
    modules: dict[Kind, frozenset[str]] = {}
    for kind in Kind:
        entries = data.get(kind.section) or []
        modules[kind] = frozenset(entry["gomod"].split()[0].rstrip("/").rsplit("/", 1)[-1] for entry in entries)
    return modules


def configured_components(config: Mapping[str, Any]) -> Iterator[tuple[Kind, str]]:
    for kind in Kind:
        for component_id in config.get(kind.section) or {}:
            yield kind, component_id


def check_components(config: Mapping[str, Any], manifest: Path) -> list[str]:
    modules = manifest_modules(manifest)
    problems = []
    for kind, component_id in configured_components(config):
        candidates = module_candidates(kind, component_type(component_id))
        if not modules[kind].intersection(candidates):
            problems.append(f"{kind.value} {component_id}: no module {' or '.join(candidates)} in {manifest.name}")
    return problems


def env_references(config: Any) -> set[str]:
    """The environment variables a config expands (``${env:NAME}``), in keys and string values."""
    if isinstance(config, str):
        return set(_ENV_REFERENCE.findall(config))
    if isinstance(config, Mapping):
        return {name for key, item in config.items() for name in env_references(key) | env_references(item)}
    if isinstance(config, list | tuple):
        return {name for item in config for name in env_references(item)}
    host = getattr(config, "host", None)  # an Endpoint placeholder: a literal host, a port from values
    return env_references(host) if isinstance(host, str) else set()


class CoreSchemas:
    """The collector's generated component schemas (``core-config-schemas``), as plain JSON Schema."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, dict[str, Any]] = {}
        for path in sorted(root.rglob("config.schema.yaml")):
            key = "/" + path.parent.relative_to(root).as_posix()
            self._files[key] = yaml.safe_load(path.read_text()) or {}

    def schema_for(self, kind: Kind, component_id: str) -> dict[str, Any] | None:
        """The strict schema of one component's settings, or None when the folder has none."""
        for module in module_candidates(kind, component_type(component_id)):
            key = f"/{kind.value}/{module}"
            if key in self._files:
                document = {k: v for k, v in self._files[key].items() if k != "$defs"}
                return _strict(self._resolve(document, key))
        return None

    def _target(self, reference: str, where: str) -> tuple[str, str]:
        if reference.startswith(("/", "./")):
            path, _, name = reference.rpartition(".")
            if path.startswith("./"):
                path = where + path[1:]
            return path, name
        return where, reference  # a bare name: a definition of the same file

    def _resolve(self, node: Any, where: str, depth: int = 0) -> Any:
        if depth > 50:
            raise RecursionError(f"schema references nest too deep at {where}")
        if isinstance(node, list):
            return [self._resolve(item, where, depth + 1) for item in node]
        if not isinstance(node, dict):
            return node
        resolved = {key: self._resolve(value, where, depth + 1) for key, value in node.items() if key != "$ref"}
        if "$ref" in node:
            path, name = self._target(node["$ref"], where)
            try:
                target = self._files[path]["$defs"][name]
            except KeyError:
                raise KeyError(f"{node['$ref']} (from {where}) is not in {self.root}") from None
            resolved = _merge(self._resolve(target, path, depth + 1), resolved)
        for branch in resolved.pop("allOf", []):
            resolved = _merge(resolved, branch)
        return resolved

    def check(self, config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """(problems, ids of the components that have no core schema and were not checked)."""
        problems, unchecked = [], []
        for kind, component_id in configured_components(config):
            schema = self.schema_for(kind, component_id)
            if schema is None:
                unchecked.append(f"{kind.value} {component_id}")
                continue
            settings = config[kind.section][component_id] or {}
            for error in jsonschema.Draft202012Validator(schema).iter_errors(settings):
                where = ".".join(str(part) for part in error.absolute_path) or "(top)"
                problems.append(f"{kind.value} {component_id}: {where}: {error.message}")
        return problems, unchecked


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Two object schemas as one: properties and required lists combined, other keys from ``extra``."""
    merged = {**base, **{key: value for key, value in extra.items() if key not in ("properties", "required")}}
    if "properties" in base or "properties" in extra:
        merged["properties"] = {**base.get("properties", {}), **extra.get("properties", {})}
    if "required" in base or "required" in extra:
        merged["required"] = sorted({*base.get("required", []), *extra.get("required", [])})
    return merged


def _strict(node: Any) -> Any:
    """Unknown keys rejected wherever an object lists its properties (the files never say so)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    strict = {key: _strict(value) for key, value in node.items()}
    if "properties" in strict and "additionalProperties" not in strict:
        strict["additionalProperties"] = False
    return strict
