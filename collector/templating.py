"""Placeholders that the Helm chart fills in: the structure is Python's, the numbers are the chart's.

A collector config written here names its components and wires its pipelines; what a platform
engineer tunes (ports, sampling percentages, memory limits, endpoints) is a ``Value`` that points
at a path in ``helm/meshlens/values.yaml``, or a ``Helper`` that names a template of the chart
(for what depends on the release, such as a service's DNS name). So every tunable has one home,
``values.yaml``, and the structure has one home, this package.

The files are written as YAML in which each placeholder is a Helm action (``{{ ... }}``); the
chart runs them through ``tpl`` and then ``fromYaml``. Each action renders JSON (``toJson``),
which is valid YAML, so a value keeps its type: an integer stays an integer, a string is quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

# A values path: dotted keys, each a valid Go template field name, so `.Values.<path>` works.
_VALUES_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*$")
# A named template: the chart's helpers are namespaced `meshlens.`.
_HELPER_NAME = re.compile(r"^meshlens(\.[A-Za-z][A-Za-z0-9]*)+$")
# The pipeline functions a Value may apply before toJson (sprig functions Helm provides).
_PIPES = frozenset({"toString"})


@dataclass(frozen=True)
class Value:
    """A value from ``values.yaml``, by its dotted path (``collector.ports.otlpGrpc``)."""

    path: str
    pipe: str = ""
    """A function applied before ``toJson``: ``toString`` where the collector wants a port as text."""

    def __post_init__(self) -> None:
        if not _VALUES_PATH.match(self.path):
            raise ValueError(f"not a values path: {self.path!r}")
        if self.pipe and self.pipe not in _PIPES:
            raise ValueError(f"unsupported pipe {self.pipe!r}; use one of {sorted(_PIPES)}")

    def action(self) -> str:
        pipe = f" | {self.pipe}" if self.pipe else ""
        return f"{{{{ .Values.{self.path}{pipe} | toJson }}}}"


@dataclass(frozen=True)
class Helper:
    """A named template of the chart (``meshlens.collector.tracesEndpoint``) that returns JSON text.

    For what depends on the release or on a choice between values (in-cluster Jaeger or an external
    endpoint); the template renders JSON so that a map, a boolean or a string keeps its type."""

    name: str

    def __post_init__(self) -> None:
        if not _HELPER_NAME.match(self.name):
            raise ValueError(f"not a meshlens helper template name: {self.name!r}")

    def action(self) -> str:
        return f'{{{{ include "{self.name}" . }}}}'


@dataclass(frozen=True)
class Endpoint:
    """``host:port`` with a literal host (``${env:MESHLENS_POD_IP}``) and the port from ``values.yaml``."""

    host: str
    port: Value

    def __post_init__(self) -> None:
        if '"' in self.host or "\\" in self.host or "{{" in self.host:
            raise ValueError(f"host {self.host!r} cannot be a Go template string literal")

    def action(self) -> str:
        return f'{{{{ printf "%s:%d" "{self.host}" (int .Values.{self.port.path}) | toJson }}}}'


Placeholder = Value | Helper | Endpoint
_PLACEHOLDER_TYPES = (Value, Helper, Endpoint)


def placeholders(tree: Any) -> Iterator[Placeholder]:
    """Every placeholder in a config tree, depth first, in document order."""
    if isinstance(tree, _PLACEHOLDER_TYPES):
        yield tree
    elif isinstance(tree, Mapping):
        for item in tree.values():
            yield from placeholders(item)
    elif isinstance(tree, list | tuple):
        for item in tree:
            yield from placeholders(item)


def _swap(tree: Any, tokens: dict[str, str]) -> Any:
    """The tree with each placeholder replaced by a unique bare token, remembered in ``tokens``."""
    if isinstance(tree, _PLACEHOLDER_TYPES):
        # A bare word: YAML writes it unquoted, so the Helm action replaces the whole scalar.
        token = f"meshlensplaceholder{len(tokens)}x"
        tokens[token] = tree.action()
        return token
    if isinstance(tree, Mapping):
        return {_literal(key): _swap(item, tokens) for key, item in tree.items()}
    if isinstance(tree, list | tuple):
        return [_swap(item, tokens) for item in tree]
    return _literal(tree)


def _literal(item: Any) -> Any:
    """A plain scalar; `tpl` would run braces in it as a template action, so none may appear."""
    if isinstance(item, str) and ("{{" in item or "}}" in item):
        raise ValueError(f"{item!r}: double braces are Helm actions; use a placeholder")
    return item


def to_template(tree: Mapping[str, Any]) -> str:
    """YAML text of the tree with each placeholder as a Helm action; keys keep their order."""
    tokens: dict[str, str] = {}
    swapped = _swap(tree, tokens)
    text = yaml.safe_dump(swapped, sort_keys=False, default_flow_style=False, width=1000)
    for token, action in tokens.items():
        # The trailing "x" ends each token, so no token is a prefix of another.
        if text.count(token) != 1:  # a token YAML had quoted or folded would leave a broken file behind
            raise AssertionError(f"placeholder {action} written {text.count(token)} times")
        text = text.replace(token, action)
    return text
