"""Build dataclasses from YAML mappings, with errors that name the file and the field."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml

from specmoe.errors import InputError


class FieldError(ValueError):
    """Raised by a spec's __post_init__ when one field is out of range."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


def check(ok: bool, field: str, problem: str) -> None:
    if not ok:
        raise FieldError(field, problem)


def read_yaml(path: Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise InputError(path, "", f"cannot read file ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(path, "", f"not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise InputError(path, "", "expected a YAML mapping at the top level")
    return data


def _coerce(value, tp, source, field):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, field)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(source, field, f"expected a mapping, got {value!r}")
        return from_dict(tp, value, source, prefix=field + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(source, field, f"expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], source, f"{field}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(source, field, f"expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], source, f"{field}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(source, field, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(source, field, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(source, field, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(source, field, f"expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, source, prefix: str = ""):
    """Build dataclass `cls` from a mapping; unknown or missing keys raise InputError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(source, prefix + unknown[0], f"unknown field; known fields: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(source, prefix + name, "required field is missing")
            continue
        kwargs[name] = _coerce(data[name], hints[name], source, prefix + name)
    try:
        return cls(**kwargs)
    except InputError:
        raise
    except FieldError as e:
        raise InputError(source, prefix + e.field, e.problem) from None
    except ValueError as e:
        raise InputError(source, prefix.rstrip(".") or cls.__name__, str(e)) from None


def to_dict(obj) -> dict:
    """Dataclass to plain mapping (tuples become lists), skipping derived (init=False) fields."""
    out = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        out[f.name] = v
    return out
