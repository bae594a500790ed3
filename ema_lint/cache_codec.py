"""Plain data <-> JSON for the result cache, driven by the dataclasses' own type hints.

The cache lives where a checked tree or another user may have written it, so reading it
must never run code (pickle would) and must never yield a value of the wrong shape: every
value is rebuilt from JSON by a decoder derived from the declared type, and any mismatch
raises `CacheFormatError`, after which the cache is ignored and rebuilt.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any, Callable


class CacheFormatError(ValueError):
    """The stored data does not have the declared shape."""


def encode(value: Any) -> Any:
    """A JSON-ready form of `value`: dataclasses as lists of field values in declaration
    order, tuples and lists as lists, dicts as lists of [key, value] pairs, enums by value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [encode(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        return [[encode(k), encode(v)] for k, v in value.items()]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in the cache")


def decoder(declared: Any) -> Callable[[Any], Any]:
    """A function that rebuilds a value of type `declared` from `encode`'s output."""
    return _decoder(declared)


@functools.lru_cache(maxsize=None)
def _decoder(declared: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(declared)
    arguments = typing.get_args(declared)
    if declared is type(None):
        return _exactly(None)
    if declared in (str, int, float):
        return _scalar(declared)
    if declared is bool:
        return _scalar(bool)
    if isinstance(declared, type) and issubclass(declared, enum.Enum):
        return _enum(declared)
    if dataclasses.is_dataclass(declared):
        return _dataclass(declared)
    if origin in (typing.Union, types.UnionType):
        return _union(tuple(_decoder(a) for a in arguments))
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        item = _decoder(arguments[0])
        return lambda data: tuple(item(x) for x in _list(data))
    if origin is tuple:
        items = tuple(_decoder(a) for a in arguments)
        return lambda data: tuple(d(x) for d, x in zip(items, _list(data, len(items))))
    if origin is list:
        item = _decoder(arguments[0])
        return lambda data: [item(x) for x in _list(data)]
    if origin is dict:
        key, value = _decoder(arguments[0]), _decoder(arguments[1])
        return lambda data: {key(k): value(v) for k, v in (_list(pair, 2) for pair in _list(data))}
    raise TypeError(f"no cache decoder for {declared!r}")


def _list(data: Any, length: int | None = None) -> list:
    if type(data) is not list or (length is not None and len(data) != length):
        raise CacheFormatError(f"expected a list{'' if length is None else f' of {length}'}")
    return data


def _exactly(expected: Any) -> Callable[[Any], Any]:
    def decode(data: Any) -> Any:
        if data is not expected:
            raise CacheFormatError(f"expected {expected!r}")
        return data

    return decode


def _scalar(kind: type) -> Callable[[Any], Any]:
    def decode(data: Any) -> Any:
        # `type(...) is`: a bool is an int to isinstance, and JSON keeps them apart
        if type(data) is not kind:
            raise CacheFormatError(f"expected {kind.__name__}")
        return data

    return decode


def _enum(kind: type[enum.Enum]) -> Callable[[Any], Any]:
    def decode(data: Any) -> Any:
        try:
            return kind(data)
        except ValueError:
            raise CacheFormatError(f"not a {kind.__name__}") from None

    return decode


def _union(options: tuple[Callable[[Any], Any], ...]) -> Callable[[Any], Any]:
    def decode(data: Any) -> Any:
        for option in options:
            try:
                return option(data)
            except CacheFormatError:
                continue
        raise CacheFormatError("matches no declared alternative")

    return decode


def _dataclass(kind: type) -> Callable[[Any], Any]:
    hints = typing.get_type_hints(kind)
    names = [f.name for f in dataclasses.fields(kind) if f.init]
    if len(names) != len(dataclasses.fields(kind)):
        raise TypeError(f"{kind.__name__} has fields set outside __init__; it cannot be cached")
    # resolved on first use: a dataclass may refer to itself (`inner: tuple["Held", ...]`)
    fields: list[Callable[[Any], Any]] = []

    def decode(data: Any) -> Any:
        if not fields:
            fields.extend(_decoder(hints[name]) for name in names)
        values = _list(data, len(names))
        return kind(**{name: field(value) for name, field, value in zip(names, fields, values)})

    return decode
