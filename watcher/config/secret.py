"""Secret settings: marked on the field, masked wherever settings are shown."""

from __future__ import annotations

from dataclasses import field
from typing import Any

MASK = "********"


def secret(default: Any = None) -> Any:
    """A dataclass field whose value never appears in logs, errors or ``check-config`` output."""
    return field(default=default, metadata={"secret": True})
