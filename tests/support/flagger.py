"""Flagger's webhook call, as Flagger's Go client makes it (fluxcd/flagger pkg/controller/webhook.go,
hashicorp/go-retryablehttp, Go's net/http), over a raw socket so that nothing is added that Flagger
would not send.

* The request: ``POST``, the hook URL's path and query, headers in Go's order — ``Host``,
  ``User-Agent: Go-http-client/1.1``, ``Content-Length``, then the request's headers sorted
  (``Authorization: Basic ...`` only when the URL has user info, which Go's client turns into basic
  auth, and ``Content-Type: application/json``), then the transport's ``Accept-Encoding: gzip``. No
  other header: a Canary's webhook cannot set one (fluxcd/flagger#1192).
* The body: Go's ``json.Marshal`` of ``CanaryWebhookPayload``: keys ``name``, ``namespace``, ``phase``,
  ``checksum``, ``metadata`` (left out when empty) in that order, map keys sorted, no spaces, ``<``,
  ``>`` and ``&`` escaped.
* The answer, with the webhook's default ``retries: 0``: 429 and every 5xx but 501 make the client
  give up at once and drop the body ("POST <url> giving up after 1 attempt(s)"); any other status
  above 202 is an error whose text is the body; 200-202 is success. A transport error carries the URL
  (with the user-info password redacted, the query not).
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["FlaggerCall", "call_webhook", "go_json", "payload"]


def payload(
    name: str, namespace: str, phase: str, checksum: str, metadata: dict[str, str] | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "namespace": namespace, "phase": phase, "checksum": checksum}
    if metadata:
        body["metadata"] = dict(sorted(metadata.items()))
    return body


def go_json(value: Any) -> bytes:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


@dataclass(frozen=True)
class FlaggerCall:
    status: int | None  # None: no HTTP answer (transport error)
    error: str | None  # what Flagger records in its event; None on success
    raw_request: bytes


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:xxxxx@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


async def call_webhook(url: str, body: dict[str, Any], timeout: float = 10.0) -> FlaggerCall:
    parts = urlsplit(url)
    data = go_json(body)
    host = parts.netloc.rsplit("@", 1)[-1]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [("Host", host), ("User-Agent", "Go-http-client/1.1"), ("Content-Length", str(len(data)))]
    sorted_headers = {"Content-Type": "application/json"}
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        sorted_headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    headers += sorted(sorted_headers.items())
    headers.append(("Accept-Encoding", "gzip"))
    head = f"POST {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    raw = head.encode() + data
    try:
        status, text = await asyncio.wait_for(_exchange(parts.hostname or "", parts.port or 80, raw), timeout)
    except (OSError, TimeoutError) as exc:
        return FlaggerCall(None, f'Post "{_redacted(url)}": {exc!r}', raw)
    if status == 429 or (status >= 500 and status != 501):
        return FlaggerCall(status, f"POST {_redacted(url)} giving up after 1 attempt(s)", raw)
    if status > 202:
        return FlaggerCall(status, text, raw)
    return FlaggerCall(status, None, raw)


async def _exchange(host: str, port: int, raw: bytes) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        length = None
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            key, _, value = line.partition(":")
            if key.lower() == "content-length":
                length = int(value.strip())
        body = await (reader.readexactly(length) if length is not None else reader.read())
        return status, body.decode("utf-8", "replace")
    finally:
        writer.close()
        await writer.wait_closed()
