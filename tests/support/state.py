"""A state through the checkpoint's encoding (MessagePack, arrays as raw bytes) and back."""

from __future__ import annotations

from typing import Any

from watcher.storage.checkpoint import decode_part, encode_part


def roundtrip(state: Any) -> Any:
    """``state`` as a restore reads it back from a checkpoint."""
    return decode_part(encode_part(state))
