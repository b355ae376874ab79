"""HTTP sinks: the shared client (status classification, ``Retry-After``) and the signed webhook.

Status classes for every HTTP sink: 2xx is delivered; 408, 425, 429 and 5xx are transient (retried,
``Retry-After`` honoured, as seconds or an HTTP date); every other status is permanent (a 400 will be
a 400 again, a 403/404/410 webhook is revoked or gone) and is reported, not retried. Redirects are not
followed: a webhook that moved must be reconfigured, not silently re-posted elsewhere.

The generic webhook POSTs the JSON record (``watcher.decision/v1`` by default) signed with
HMAC-SHA256 over ``f"{timestamp}.{body}"``; docs/integrations.md has the headers and a verifier.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Annotated, Any

from msgspec import Meta

from watcher.clock import Clock, SystemClock
from watcher.config import SECRET, redact, secret_values
from watcher.contract import Item
from watcher.errors import SinkError
from watcher.sinks.base import (
    NULL_STATE,
    FilteredSink,
    HttpUrl,
    Request,
    S,
    Sent,
    SinkContext,
    SinkSettings,
    SinkState,
    SinkType,
)

__all__ = [
    "WEBHOOK",
    "HttpSink",
    "WebhookSettings",
    "WebhookSink",
    "classify",
    "encode_body",
    "parse_retry_after",
    "sign",
]

USER_AGENT = "watcher-outbox/1"
TRANSIENT_STATUSES = frozenset({408, 425, 429})
MAX_RESPONSE_BYTES = 64 * 1024
SIGNATURE_HEADER = "X-Watcher-Signature"
TIMESTAMP_HEADER = "X-Watcher-Timestamp"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def classify(status: int, retry_after: float | None, detail: str) -> None:
    """Raise the ``SinkError`` a non-2xx status means; return for 2xx."""
    if 200 <= status < 300:
        return
    message = f"HTTP {status}: {detail[:300]}".rstrip(": ")
    if status in TRANSIENT_STATUSES or status >= 500:
        raise SinkError(message, permanent=False, retry_after=retry_after)
    raise SinkError(message, permanent=True)


def encode_body(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` with the shared secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def _default_session() -> Any:
    import aiohttp

    # per-request timeouts are the outbox's; the session only bounds connecting
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))


class HttpSink(FilteredSink[S]):
    """Base of the HTTP sinks: one aiohttp session per sink (a slow receiver's connection pool is
    its own), created on first use inside the running loop."""

    def __init__(
        self,
        settings: S,
        *,
        session_factory: Callable[[], Any] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(settings)
        self._session_factory = session_factory or _default_session
        self._session: Any = None
        self._clock = clock or SystemClock()
        self._secrets = secret_values(settings)  # masked in the errors this sink reports

    def headers(self, request: Request, body: bytes) -> dict[str, str]:
        """Headers of one request; subclasses add authentication or signatures."""
        out = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if request.idempotency_key:
            out["Idempotency-Key"] = request.idempotency_key
        out.update(dict(request.headers))
        return out

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        raise NotImplementedError

    def remembered(self, request: Request, payload: Any) -> Any:
        """The value to store under ``request.remember`` from the decoded response (None: nothing)."""
        return None

    async def send(self, request: Request) -> Sent:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = self._session_factory()
        body = encode_body(request.body) if request.method != "GET" else b""
        headers = self.headers(request, body)
        try:
            async with self._session.request(
                request.method,
                request.url,
                data=body or None,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                raw = await resp.content.read(MAX_RESPONSE_BYTES)
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock.now())
        except TimeoutError:
            raise SinkError(f"no response from {self.name} within {self.timeout_s}s") from None
        except aiohttp.ClientError as exc:  # its text may hold the URL: kept in the outbox, shown by the API
            raise SinkError(redact(f"{type(exc).__name__}: {exc}", self._secrets)) from None
        text = raw.decode("utf-8", "replace")
        classify(status, retry_after, text)
        payload: Any = None
        if request.remember:
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = None
        return Sent(status=status, state=self.remembered(request, payload), detail=text[:200])

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class WebhookSettings(SinkSettings, tag="webhook", frozen=True, kw_only=True):
    """``type: webhook``: the JSON record POSTed to ``url``, signed with ``hmac_secret``."""

    url: HttpUrl
    hmac_secret: Annotated[Annotated[str, Meta(min_length=1)], SECRET]  # the receiver's signing key


class WebhookSink(HttpSink[WebhookSettings]):
    """The generic deployer webhook: the JSON record, signed, one POST per item."""

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        return [
            Request(
                kind=item.kind.value,
                url=self.settings.url,
                body=item.record,
                headers=(("X-Watcher-Event", item.kind.value),),
            )
        ]

    def headers(self, request: Request, body: bytes) -> dict[str, str]:
        out = super().headers(request, body)
        # signed at send time, not render time: a retry an hour later carries a fresh timestamp
        timestamp = int(self._clock.now())
        out[TIMESTAMP_HEADER] = str(timestamp)
        out[SIGNATURE_HEADER] = sign(self.settings.hmac_secret, timestamp, body)
        return out


def _build(settings: WebhookSettings, ctx: SinkContext) -> WebhookSink:
    return WebhookSink(settings, session_factory=ctx.session_factory, clock=ctx.clock)


WEBHOOK = SinkType(WebhookSettings, _build)
