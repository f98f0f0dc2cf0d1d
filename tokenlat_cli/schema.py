"""A small declarative schema for profile files.

Why not JSON Schema: operators need messages that name the field path and say what is wrong in their words
(``backend.auth.kind: must be one of basic, bearer, none``), defaults filled in so that templates can use
StrictUndefined, and the same definition to generate the reference docs from. Each node validates a value at a
path and returns it normalised, or raises ``SchemaError``.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_MISSING: Any = object()
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")
ENV_REFERENCE = re.compile(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}")


# A value shown in a message, cut short: a profile's YAML can alias one list into another a few times over (a
# 400-byte file whose full repr is 500 MB) or hold one very long string, and a message must stay a line.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 100, 100
_SHOWN_CHARS = 200


def shown(value: object) -> str:
    """``repr(value)``, cut short where it is long or deep (reprlib never builds the whole of it)."""
    text = _SHOWN.repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


class SchemaError(ValueError):
    """A value that breaks the schema, with the dotted path of the field it sits at."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or '(top level)'}: {reason}")
        self.path = path
        self.reason = reason


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "empty"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True)
class Node:
    """Base of all schema nodes: a description for the docs and an optional default."""

    doc: str = ""
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def validate(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def describe_type(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Node):
    pattern: re.Pattern[str] | None = None
    pattern_hint: str = ""

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise SchemaError(path, f"must be a string, got {_type_name(value)}")
        if self.pattern is not None and not self.pattern.match(value):
            raise SchemaError(path, f"{shown(value)} is not {self.pattern_hint}")
        return value

    def describe_type(self) -> str:
        return f"string ({self.pattern_hint})" if self.pattern_hint else "string"


@dataclass(frozen=True)
class Int(Node):
    minimum: int | None = None
    maximum: int | None = None

    def validate(self, value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"must be an integer, got {_type_name(value)}")
        if self.minimum is not None and value < self.minimum:
            raise SchemaError(path, f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise SchemaError(path, f"must be at most {self.maximum}, got {value}")
        return value

    def describe_type(self) -> str:
        bounds = [
            f">= {self.minimum}" if self.minimum is not None else "",
            "" if self.maximum is None else f"<= {self.maximum}",
        ]
        shown = ", ".join(b for b in bounds if b)
        return f"integer ({shown})" if shown else "integer"


@dataclass(frozen=True)
class Float(Node):
    minimum: float | None = None
    maximum: float | None = None

    def validate(self, value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(path, f"must be a number, got {_type_name(value)}")
        if self.minimum is not None and value < self.minimum:
            raise SchemaError(path, f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise SchemaError(path, f"must be at most {self.maximum}, got {value}")
        return float(value)

    def describe_type(self) -> str:
        return f"number ({self.minimum} to {self.maximum})" if self.maximum is not None else "number"


@dataclass(frozen=True)
class Bool(Node):
    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, bool):
            raise SchemaError(path, f"must be true or false, got {_type_name(value)}")
        return value

    def describe_type(self) -> str:
        return "boolean"


@dataclass(frozen=True)
class Enum(Node):
    choices: tuple[str, ...] = ()

    def validate(self, value: Any, path: str) -> Any:
        if value not in self.choices:
            raise SchemaError(path, f"must be one of {', '.join(sorted(self.choices))}, got {shown(value)}")
        return value

    def describe_type(self) -> str:
        return "one of " + ", ".join(f"`{c}`" for c in self.choices)


@dataclass(frozen=True)
class List(Node):
    item: Node = field(default_factory=Str)
    unique: bool = True

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise SchemaError(path, f"must be a list, got {_type_name(value)}")
        items = [self.item.validate(v, _join(path, i)) for i, v in enumerate(value)]
        if self.unique:
            seen: set[Any] = set()
            for i, v in enumerate(items):
                if v in seen:
                    raise SchemaError(_join(path, i), f"{shown(v)} is listed twice")
                seen.add(v)
        return items

    def describe_type(self) -> str:
        return f"list of {self.item.describe_type()}"


@dataclass(frozen=True)
class StrMap(Node):
    """A mapping of string keys to string values (headers, external labels)."""

    value_check: Callable[[str, str, str], None] | None = None

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise SchemaError(path, f"must be a mapping, got {_type_name(value)}")
        out: dict[str, str] = {}
        for key, item in value.items():
            item_path = _join(path, str(key))
            if not isinstance(key, str) or not isinstance(item, str):
                raise SchemaError(item_path, "keys and values must be strings")
            if self.value_check is not None:
                self.value_check(key, item, item_path)
            out[key] = item
        return out

    def describe_type(self) -> str:
        return "mapping of string to string"


@dataclass(frozen=True)
class IntMap(Node):
    """A mapping of string keys to integers (declared label-value counts)."""

    minimum: int = 0

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise SchemaError(path, f"must be a mapping, got {_type_name(value)}")
        for key, item in value.items():
            Int(minimum=self.minimum).validate(item, _join(path, str(key)))
        return dict(value)

    def describe_type(self) -> str:
        return "mapping of string to integer"


@dataclass(frozen=True)
class ListMap(Node):
    """A mapping of string keys to non-empty lists of distinct strings (the values an attribute may take)."""

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise SchemaError(path, f"must be a mapping, got {_type_name(value)}")
        out: dict[str, list[str]] = {}
        for key, items in value.items():
            item_path = _join(path, str(key))
            if not isinstance(key, str):
                raise SchemaError(item_path, "keys must be strings")
            out[key] = List(item=Str()).validate(items, item_path)
            if not out[key]:
                raise SchemaError(item_path, "must list at least one value")
        return out

    def describe_type(self) -> str:
        return "mapping of string to list of string"


@dataclass(frozen=True)
class Obj(Node):
    """A mapping with known keys; unknown keys are errors, never ignored (a typo must not pass silently)."""

    fields: Mapping[str, Node] = field(default_factory=dict)
    check: Callable[[dict[str, Any], str], None] | None = None

    def validate(self, value: Any, path: str) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise SchemaError(path, f"must be a mapping, got {_type_name(value)}")
        unknown = sorted(set(value) - set(self.fields), key=str)
        if unknown:
            known = ", ".join(self.fields)
            raise SchemaError(_join(path, str(unknown[0])), f"unknown field (known here: {known})")
        out: dict[str, Any] = {}
        for name, node in self.fields.items():
            child_path = _join(path, name)
            if name in value:
                out[name] = node.validate(value[name], child_path)
            elif isinstance(node, Obj):
                out[name] = node.validate({}, child_path)
            elif node.required:
                raise SchemaError(child_path, "is required")
            else:
                out[name] = node.default
        if self.check is not None:
            self.check(out, path)
        return out

    def describe_type(self) -> str:
        return "mapping"

    def walk(self, path: str = "") -> list[tuple[str, Node]]:
        """Every field below this one with its dotted path, depth first (for the reference docs)."""
        rows: list[tuple[str, Node]] = []
        for name, node in self.fields.items():
            child_path = _join(path, name)
            rows.append((child_path, node))
            if isinstance(node, Obj):
                rows.extend(node.walk(child_path))
        return rows
