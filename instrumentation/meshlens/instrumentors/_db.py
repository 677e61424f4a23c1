"""What database client spans share: the operation, the collection and the query text with
its literals removed, per the OpenTelemetry database semantic conventions.

The RED processor (:mod:`meshlens.red`) turns a client span that carries ``db.system.name``,
``db.namespace`` and ``db.operation.name`` into one ``db_client_operation_duration_seconds``
observation, so these spans carry exactly those attributes, and the metrics need no code here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshlens import catalogue

MAX_QUERY_TEXT_LENGTH = 2048
"""Characters of query text kept on a span; longer text is cut, and counted."""
_MAX_OPERATION_LENGTH = 32

# Literals, each replaced by "?". A string cut by the length limit has no closing quote:
# it runs to the end and is still removed. Numbers inside identifiers (t1, col_2) stay.
_LITERALS = re.compile(
    r"""'(?:[^'\\]|\\.|'')*(?:'|$)"""  # 'string', with \' and '' escapes
    r"""|(?<![\w.$`"])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)(?![\w`"])""",
    re.DOTALL,
)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(?:\*/|$)", re.DOTALL)
_KEYWORD = re.compile(r"[A-Za-z]+")
_IDENTIFIER = r"(?:`[^`]+`|\"[^\"]+\"|[A-Za-z_][\w$]*)"
_TABLE = rf"({_IDENTIFIER}(?:\.{_IDENTIFIER})?)"
# Where a statement names its one table; a SELECT with joins or several FROMs names none.
_COLLECTION = {
    "SELECT": re.compile(rf"\bFROM\s+{_TABLE}", re.IGNORECASE),
    "INSERT": re.compile(rf"\bINTO\s+(?:TABLE\s+)?(?:FUNCTION\s+)?{_TABLE}", re.IGNORECASE),
    "CREATE": re.compile(rf"\b(?:TABLE|VIEW|DICTIONARY)\s+(?:IF\s+NOT\s+EXISTS\s+)?{_TABLE}", re.IGNORECASE),
    "DROP": re.compile(rf"\b(?:TABLE|VIEW|DICTIONARY)\s+(?:IF\s+EXISTS\s+)?{_TABLE}", re.IGNORECASE),
    "ALTER": re.compile(rf"\bTABLE\s+{_TABLE}", re.IGNORECASE),
    "TRUNCATE": re.compile(rf"\bTABLE\s+(?:IF\s+EXISTS\s+)?{_TABLE}", re.IGNORECASE),
    "OPTIMIZE": re.compile(rf"\bTABLE\s+{_TABLE}", re.IGNORECASE),
}
_SEVERAL_TABLES = re.compile(r"\bJOIN\b|\bFROM\b.*\bFROM\b|\bFROM\s*\(", re.IGNORECASE | re.DOTALL)


def sanitize(query: str, limit: int = MAX_QUERY_TEXT_LENGTH) -> tuple[str, bool]:
    """The query with every literal replaced by ``?`` and at most ``limit`` characters; and
    whether it was cut. Cut first, so a huge statement costs no more than a short one."""
    truncated = len(query) > limit
    if truncated:
        query = query[:limit]
    return _LITERALS.sub("?", query), truncated


def _unquote(name: str) -> str:
    return ".".join(part.strip('`"') for part in re.findall(_IDENTIFIER, name))


@dataclass(frozen=True)
class Statement:
    """What a span says about one statement."""

    operation: str
    collection: str
    text: str
    truncated: bool

    @property
    def span_name(self) -> str:
        """``{operation} {collection}`` as the conventions name a database span."""
        return f"{self.operation} {self.collection}" if self.collection else self.operation or "query"


def describe(query: str, limit: int = MAX_QUERY_TEXT_LENGTH) -> Statement:
    text, truncated = sanitize(query, limit)
    code = _COMMENTS.sub(" ", text).lstrip(" \t\r\n(")
    keyword = _KEYWORD.match(code)
    operation = keyword.group(0).upper()[:_MAX_OPERATION_LENGTH] if keyword else ""
    collection = ""
    pattern = _COLLECTION.get(operation)
    if pattern is not None and not (operation == "SELECT" and _SEVERAL_TABLES.search(code)):
        found = pattern.search(code)
        if found:
            collection = _unquote(found.group(1))
    return Statement(operation, collection, text, truncated)


def count_truncated(system: str) -> None:
    """Counts a query text cut at the limit, in the running meshlens (if any)."""
    from meshlens import current  # the runtime, when meshlens is configured in this process

    runtime = current()
    if runtime is not None:
        runtime.instruments[catalogue.MESHLENS_DB_QUERY_TEXT_TRUNCATED].labels(system).inc()
