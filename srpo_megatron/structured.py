"""Typed dataclass configs from plain YAML data, field by field, naming the path of anything wrong.

Shared by the run config (`srpo_megatron.config`) and the launcher's config (which runs in its own
virtualenv, so this module imports nothing but the standard library).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any


def build(cls: type, data: Any, where: str = "", error: type[Exception] = ValueError) -> Any:
    """Instantiate dataclass `cls` from a mapping; unknown, missing or mistyped fields raise `error`
    naming their dotted path (and, for unknown names, the valid ones)."""
    if not isinstance(data, Mapping):
        raise error(f"{where or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        path = f"{where}.{unknown[0]}" if where else unknown[0]
        raise error(f"{path}: unknown field; valid fields: {', '.join(fields)}")
    kwargs = {}
    for name, field in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], path, error)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise error(f"{path}: required field is missing")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, error: type[Exception]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _coerce(options[0], value, where, error) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, error)
    if origin is typing.Literal:
        if value not in args:
            raise error(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise error(f"{where}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]", error) for i, v in enumerate(value)] if args else value
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise error(f"{where}: expected a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {str(k): _coerce(args[1], v, f"{where}.{k}", error) for k, v in value.items()}
    return _scalar(hint, value, where, error)


def _scalar(hint: Any, value: Any, where: str, error: type[Exception]) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise error(f"{where}: expected true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(f"{where}: expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise error(f"{where}: expected a number, got {value!r}")
        return float(value)
    elif hint is str:
        # numbers written without quotes (`time: 10`, `NCCL_IB_TIMEOUT: 22`) are strings here
        if isinstance(value, (Mapping, list)) or value is None:
            raise error(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value
