"""One way to validate settings: typed classes, ``msgspec.convert``, errors that name the field.

Every settings class (the configuration's sections, each sink's settings, the policy's sections, the
hook targets) is a frozen ``msgspec.Struct`` that forbids unknown fields (a typo must not fall back to
a default silently); a value's constraints live in its type (``Annotated[int, Meta(ge=1)]``,
``Literal["earliest", "latest"]``); checks across fields live in ``__post_init__`` and raise
``ConfigError`` themselves. ``convert(raw, cls, where)`` builds one from plain data (YAML, the
environment) and turns msgspec's errors into a ``ConfigError`` whose ``field`` is the dotted path
(``kafka.bootstrap_servers``, ``sinks[hook].url``, ``defaults.metrics.error.tolerance``) and whose
message says what was expected and what was found, except for a secret's value, which is never shown.

A field is secret when its type is ``Annotated[..., SECRET]``; ``plain(obj)`` is the object as plain
data with every secret that is set replaced by ``MASK`` and the secret parts of every URL masked
(``watcher.config.redaction``: a password in the user info, a ``?token=``, a Slack webhook's path);
``secret_values(obj)`` collects the same secrets, for masking log lines.

>>> class Http(Section):  # (annotations are resolved in this module's namespace)
...     port: typing.Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
...     mode: typing.Literal["fast", "safe"] = "safe"
...     token: typing.Annotated[str | None, SECRET] = None
>>> convert({"port": "9000"}, Http, "http", strict=False).port
9000
>>> convert({"port": 70000}, Http, "http")
Traceback (most recent call last):
...
watcher.errors.ConfigError: http.port: must be <= 65535, got 70000
>>> convert({"mode": "quick"}, Http, "http")
Traceback (most recent call last):
...
watcher.errors.ConfigError: http.mode: must be one of fast, safe; got 'quick'
>>> convert({"prot": 1}, Http, "http")
Traceback (most recent call last):
...
watcher.errors.ConfigError: http.prot: unknown setting (known: mode, port, token)
>>> plain(Http(token="hunter2"))
{'port': 8080, 'mode': 'safe', 'token': '********'}
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from watcher.config.redaction import MIN_SECRET, mask_url, url_secrets
from watcher.errors import ConfigError

__all__ = [
    "MASK",
    "PATTERNS",
    "SECRET",
    "TOPIC_PATTERN",
    "Section",
    "convert",
    "field_type",
    "plain",
    "read_yaml",
    "secret_values",
    "unwrap",
]

T = TypeVar("T")
MASK = "********"


class _Secret:
    def __repr__(self) -> str:
        return "SECRET"


SECRET = _Secret()  # marks a field: Annotated[str | None, SECRET]


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every settings class: frozen, keyword-only, unknown fields refused."""


def convert(raw: Any, cls: type[T], where: str = "", *, strict: bool = True) -> T:
    """``raw`` (plain data) as a ``cls``, or a ``ConfigError`` naming the field under ``where``.
    ``strict=False`` also reads numbers and booleans written as strings (environment variables)."""
    try:
        return msgspec.convert(raw, cls, strict=strict)
    except msgspec.ValidationError as exc:
        raise _error(str(exc), raw, cls, where) from None


def plain(obj: Any) -> Any:
    """``obj`` as plain data (mappings, lists, scalars), every secret that is set masked."""
    if isinstance(obj, msgspec.Struct):
        out: dict[str, Any] = {}
        tag = obj.__struct_config__.tag
        if tag is not None:
            out[str(obj.__struct_config__.tag_field)] = tag
        for f in msgspec.structs.fields(obj):
            value = getattr(obj, f.name)
            if value is not None and _secret(f.type):
                out[f.name] = MASK
            elif isinstance(value, str) and "://" in value:
                out[f.name] = mask_url(value, path_is_secret=_secret_path(obj, f.name))
            else:
                out[f.name] = plain(value)
        return out
    if isinstance(obj, (tuple, list)):
        return [plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def secret_values(obj: Any) -> set[str]:
    """Every secret string in ``obj`` (settings, nested): the ``SECRET`` fields' values and the
    secret parts of URLs, for ``watcher.config.redaction.redact``."""
    found: set[str] = set()
    if isinstance(obj, msgspec.Struct):
        for f in msgspec.structs.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, str) and value:
                if _secret(f.type):
                    found.add(value)
                elif "://" in value:
                    found |= url_secrets(value, path_is_secret=_secret_path(obj, f.name))
            else:
                found |= secret_values(value)
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            found |= secret_values(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            found |= secret_values(item)
    return {s for s in found if len(s) >= MIN_SECRET}


def _secret_path(obj: msgspec.Struct, name: str) -> bool:
    """A Slack sink's ``url`` is the credential itself, whatever its host."""
    return name == "url" and obj.__struct_config__.tag == "slack"


# -- the type at a path --------------------------------------------------------------------------
def unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type without ``Annotated`` and ``None``, whether ``None`` is allowed)."""
    optional = False
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (types.UnionType, typing.Union):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(tp))
            if len(args) == 1:
                tp = args[0]
                continue
        return tp, optional


def field_type(cls: Any, path: Sequence[str | int]) -> Any:
    """The annotated type of the field at ``path`` (names and list indices) under ``cls``; None when
    the path leaves what the types describe."""
    tp: Any = cls
    for token in path:
        inner, _ = unwrap(tp)
        origin = typing.get_origin(inner)
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct) and isinstance(token, str):
            fields = {f.name: f.type for f in msgspec.structs.fields(inner)}
            if token not in fields:
                return None
            tp = fields[token]
        elif origin in (tuple, list) and isinstance(token, int):
            tp = typing.get_args(inner)[0]
        elif origin is dict:
            tp = typing.get_args(inner)[1]
        else:
            return None
    return tp


def _secret(tp: Any) -> bool:
    while typing.get_origin(tp) is typing.Annotated:
        if any(m is SECRET for m in typing.get_args(tp)[1:]):
            return True
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return any(_secret(a) for a in typing.get_args(tp))
    return False


# -- msgspec's errors, said the way an operator reads them ---------------------------------------
_AT = re.compile(r"^(?P<message>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)
_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_EXPECTED = re.compile(r"^Expected `(?P<type>[^`]+)`(?: (?P<rest>.*?))?(?:, got `(?P<got>[^`]+)`)?$")
# what a pattern constraint means, for its error (``Annotated[str, Meta(pattern=...)]``)
# Kafka's own rule for topic names (a broker refuses an invalid one only when a record is written to it)
TOPIC_PATTERN = r"^(?![.][.]?$)[A-Za-z0-9._-]{1,249}$"
PATTERNS: dict[str, str] = {
    r"^https?://": "must be an http(s) URL",
    TOPIC_PATTERN: "must be a Kafka topic name: 1-249 of letters, digits, '.', '_', '-'",
}
_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _error(text: str, raw: Any, cls: Any, where: str) -> ConfigError:
    m = _AT.match(text)
    assert m is not None  # the pattern matches any text
    message, path = m.group("message"), _tokens(m.group("path") or "$")
    named = re.match(r"^Object (contains unknown|missing required) field `(?P<name>[^`]+)`$", message)
    if named:
        path.append(named.group("name"))
        if "unknown" in message:
            parent, _ = unwrap(field_type(cls, path[:-1]))
            known = sorted(f.name for f in msgspec.structs.fields(parent)) if _is_struct(parent) else []
            said = f"unknown setting (known: {', '.join(known)})" if known else "unknown setting"
        else:
            said = "is required"
        return ConfigError(_dotted(where, path), said)
    tp = field_type(cls, path)
    shown = "" if _secret(tp) else _shown(raw, path)
    expected = _EXPECTED.match(message)
    if message.startswith("Invalid enum value") or message.startswith("Invalid value"):
        choices = _choices(tp)
        said = f"must be one of {', '.join(choices)}" if choices else "is not a known value"
        said += f"; got {shown}" if shown else ""
    elif expected and expected.group("rest"):  # a constraint: "Expected `int` >= 1"
        said = _constraint(expected.group("type"), expected.group("rest"))
        said += f", got {shown}" if shown else ""
    elif expected:
        words = [_WORDS.get(t.strip(), f"`{t.strip()}`") for t in expected.group("type").split("|")]
        said = f"expected {' or '.join(words)}"
        said += (
            f", got {shown}" if shown else f", got {_WORDS.get(expected.group('got') or '', 'another type')}"
        )
    else:  # a check of the class itself (a ValueError of its __post_init__)
        said = message
    return ConfigError(_dotted(where, path), said)


def _tokens(path: str) -> list[str | int]:
    out: list[str | int] = []
    for name, index in _TOKEN.findall(path[1:]):
        out.append(name if name else (int(index) if index.isdigit() else "..."))
    return out


def _dotted(where: str, path: Sequence[str | int]) -> str:
    out = where
    for token in path:
        out += f"[{token}]" if isinstance(token, int) else (f".{token}" if out else str(token))
    return out or "config"


def _shown(raw: Any, path: Sequence[str | int]) -> str:
    node = raw
    for token in path:
        if isinstance(token, int) and isinstance(node, (list, tuple)) and token < len(node):
            node = node[token]
        elif isinstance(token, str) and isinstance(node, Mapping) and token in node:
            node = node[token]
        else:
            return ""
    if isinstance(node, str) and "://" in node:
        return repr(mask_url(node))  # a URL may carry a credential even where the field is not secret
    return "" if isinstance(node, (Mapping, list, tuple)) else repr(node)


def _choices(tp: Any) -> list[str]:
    inner, _ = unwrap(tp)
    if typing.get_origin(inner) is typing.Literal:
        return [str(a) for a in typing.get_args(inner)]
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return [str(e.value) for e in inner]
    if typing.get_origin(inner) in (tuple, list):
        return _choices(typing.get_args(inner)[0])
    return []


def _constraint(type_name: str, rest: str) -> str:
    length = re.match(r"^of length (?P<op>[<>]=?) (?P<n>\d+)$", rest)
    if length:
        n, op = int(length.group("n")), length.group("op")
        unit = "characters" if type_name == "str" else "items"
        if op == ">=":
            return f"must have at least {n} {unit}" if n != 1 else "must not be empty"
        return f"must have at most {n} {unit}" if op == "<=" else f"must have {op} {n} {unit}"
    regex = re.match(r"^matching regex '(?P<regex>.*)'$", rest, re.DOTALL)
    if regex:
        return PATTERNS.get(regex.group("regex"), f"must match {regex.group('regex')}")
    return f"must be {rest}"


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def read_yaml(path: str | Path, field: str) -> Any:
    """The YAML document in ``path``. A file that cannot be read or parsed is a ``ConfigError`` on
    ``field`` in one line, saying where (line, column) and what, instead of PyYAML's multi-line report
    about a "<unicode string>"."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = exc.problem or exc.context or "cannot be parsed"
        raise ConfigError(field, f"{path} is not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(field, f"{path} is not valid YAML: {exc}") from None
