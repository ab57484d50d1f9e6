"""Strict dataclass loading: unknown keys, wrong types and out-of-range values are rejected with
the key's dotted path, what was expected and the valid choices. Used by the recipe and the targets."""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import sys
import types
import typing
from typing import Any, Literal, Union

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def field(default: Any = dataclasses.MISSING, *, ge: float | None = None, le: float | None = None,
          gt: float | None = None, lt: float | None = None, help: str = "", default_factory: Any = dataclasses.MISSING):
    """A dataclass field with optional numeric bounds, checked on load."""
    meta = {"ge": ge, "le": le, "gt": gt, "lt": lt, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        args = typing.get_args(tp)
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a table"
    if tp is type(None):
        return "nothing"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not valid; choose one of: {', '.join(map(str, choices))}.")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}.")
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        return [_convert(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}.")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}.")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}.")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {where}")


def _check_bounds(f: dataclasses.Field, value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    m = f.metadata
    if m.get("ge") is not None and value < m["ge"]:
        raise ConfigError(f"{where}: {value!r} is out of range; it must be >= {m['ge']}.")
    if m.get("gt") is not None and value <= m["gt"]:
        raise ConfigError(f"{where}: {value!r} is out of range; it must be > {m['gt']}.")
    if m.get("le") is not None and value > m["le"]:
        raise ConfigError(f"{where}: {value!r} is out of range; it must be <= {m['le']}.")
    if m.get("lt") is not None and value >= m["lt"]:
        raise ConfigError(f"{where}: {value!r} is out of range; it must be < {m['lt']}.")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; every problem is a ConfigError naming the dotted key."""
    label = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a table, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = _key(unknown[0]) if isinstance(unknown[0], str) else repr(unknown[0])  # "\n" = 1 is a TOML key too
        key = f"{where}.{k}" if where else k
        raise ConfigError(f"{key}: unknown key; valid keys here are: {', '.join(fields)}.")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            value = _convert(hints[name], data[name], key)
            _check_bounds(f, value, key)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing; expected {_type_name(hints[name])}.")
    obj = cls(**kwargs)
    check = getattr(obj, "_check", None)
    if check is not None:
        check(where)
    return obj


def to_dict(obj: Any) -> Any:
    """The dataclass as plain data, with None values left out (TOML has no null)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) is not None}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items() if v is not None}
    return obj


def load_toml(path: str, what: str = "file") -> dict:
    """Read a TOML file, turning every failure into a one-sentence ConfigError naming the file."""
    shown = str(path) if str(path).isprintable() else repr(str(path))  # a newline in a name must not split the message
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except ValueError:  # a NUL byte in the path
        raise ConfigError(f"{shown}: not a usable file name; pass the path of a .toml file.") from None
    except FileNotFoundError:
        raise ConfigError(f"{shown}: {what} not found; check the path.") from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a folder, not a {what}; pass a .toml file.") from None
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read the {what} ({e.strerror}).") from None
    if not raw.strip():
        raise ConfigError(f"{shown}: the {what} is empty; write TOML keys into it.")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: the {what} is not UTF-8 text; save it as TOML.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{shown}: not valid TOML ({e}); fix the syntax.") from None
    except RecursionError:
        raise ConfigError(f"{shown}: not valid TOML (nested too deeply); fix the syntax.") from None


def dump_toml(data: dict) -> str:
    """A small TOML writer for resolved recipes (tables, arrays of tables, scalars, lists)."""
    out: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return _string(v)
        if isinstance(v, (datetime.date, datetime.time)):  # TOML dates and times (datetime is a date)
            return v.isoformat()
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{_key(k)} = {scalar(x)}" for k, x in v.items()) + " }"
        raise TypeError(type(v))

    def emit(table: dict, prefix: str) -> None:
        simple = {k: v for k, v in table.items() if not _is_table(v) and not _is_table_array(v)}
        if prefix and (simple or not table):
            out.append(f"\n[{prefix}]")
        for k, v in simple.items():
            out.append(f"{_key(k)} = {scalar(v)}")
        for k, v in table.items():
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if _is_table(v):
                emit(v, name)
            elif _is_table_array(v):
                for item in v:
                    out.append(f"\n[[{name}]]")
                    for k2, v2 in item.items():
                        out.append(f"{_key(k2)} = {scalar(v2)}")

    emit(data, "")
    return "\n".join(out).lstrip("\n") + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _string(k)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(v: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in v) + '"'
