"""What every JSON endpoint of the API answers with, and how it reads a body: one place for the
error shape (``{"error": ..., **extra}``) and the body rules (at most ``max_body_bytes``, a JSON
object), so the rollout and the delivery endpoints cannot drift apart."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from watcher.storage import json_safe

__all__ = ["error_reply", "json_reply", "read_object"]


def json_reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(json_safe(data), separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def error_reply(status: int, message: str, **extra: Any) -> web.Response:
    return json_reply({"error": message, **extra}, status=status)


async def read_object(request: web.Request, max_body_bytes: int) -> dict[str, Any] | web.Response:
    """The body as a JSON object (an empty body is ``{}``), or the error reply to send instead."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return error_reply(413, f"body larger than {max_body_bytes} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # (the guard refuses deep ones first)
        return error_reply(400, "body is not valid JSON")
    if not isinstance(body, dict):
        return error_reply(400, "body must be a JSON object")
    return body
