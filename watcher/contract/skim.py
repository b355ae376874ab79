"""Cutting unknown top-level fields out of a message without parsing their values.

The contract ignores fields it does not know, and producers may put anything there. A value nested
deeper than the parser's recursion limit (msgspec and Python's ``json`` both stop at about a
thousand levels) would make an otherwise valid turn unreadable; ``without_fields`` finds the
top-level members by scanning for structure (strings skipped, nesting counted, no recursion) and
returns the message without the members not in ``keep``, for the decoder to read again. Only messages
the decoder could not read go through here: the usual ones never do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection

__all__ = ["without_fields"]

_TOKENS = re.compile(rb'["\\\[\]{},:]')
_SPACE = b" \t\r\n"


def without_fields(raw: bytes, keep: Collection[str]) -> bytes | None:
    """``raw`` (a JSON object) without its top-level members whose key is not in ``keep``; None when
    it is not an object, is malformed, or has no such member (nothing to cut).

    >>> without_fields(b'{"a": 1, "deep": [[[]]], "b": "x,}"}', {"a", "b"})
    b'{"a": 1,"b": "x,}"}'
    >>> without_fields(b'{"a": 1}', {"a"}) is None
    True
    """
    start = len(raw) - len(raw.lstrip(_SPACE))
    if raw[start : start + 1] != b"{":
        return None
    members: list[tuple[int, int, str]] = []  # (start of the key, end of the value, key)
    depth, in_string, escaped_at = 0, False, -1
    key_start = string_start = -1
    key: str | None = None
    for m in _TOKENS.finditer(raw, start):
        pos, c = m.start(), m.group()
        if in_string:
            if pos == escaped_at:
                continue
            if c == b"\\":
                escaped_at = pos + 1
            elif c == b'"':
                in_string = False
                if depth == 1 and key is None and key_start == string_start:
                    try:
                        key = json.loads(raw[string_start : pos + 1])
                    except ValueError:
                        return None
            continue
        if c == b'"':
            in_string, string_start = True, pos
            if depth == 1 and key is None and key_start < 0:
                key_start = pos
        elif c in b"[{":
            depth += 1
        elif c in b"]}" or c == b",":
            if depth == 1 and key is not None:  # the end of a member's value
                members.append((key_start, pos, key))
                key, key_start = None, -1
            if c != b",":
                depth -= 1
                if depth == 0:
                    return _rebuild(raw, start, pos, members, keep)
    return None


def _rebuild(
    raw: bytes, start: int, end: int, members: list[tuple[int, int, str]], keep: Collection[str]
) -> bytes | None:
    kept = [raw[s:e].rstrip(_SPACE) for s, e, k in members if k in keep]
    if len(kept) == len(members):
        return None
    return b"{" + b",".join(kept) + b"}" + raw[end + 1 :].strip(_SPACE)
