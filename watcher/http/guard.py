"""What the HTTP port refuses before any handler runs: the request guard and the connection guard.

``middleware(http)`` (placed before authentication):

* **Writes are JSON (or protobuf).** A ``POST``/``PUT``/``PATCH``/``DELETE`` needs ``Content-Type:
  application/json`` (``application/x-protobuf`` for OTLP), 415 otherwise, also without a body: a
  browser can send a form or ``text/plain`` across sites without asking, never those, so a page on
  another site cannot make a visitor's browser change a rollout (cross-site request forgery).
* **Origin.** A write whose ``Origin`` (or ``Sec-Fetch-Site: cross-site``) shows it comes from a page
  of another site gets 403, unless the origin is in ``http.allowed_origins``; clients that are not
  browsers send no ``Origin`` and are not affected.
* **Host.** Without a token, writes are accepted only from loopback clients; such a request must
  name a loopback host (``localhost``, ``127.0.0.1``, ``[::1]``) or one of ``http.allowed_hosts``, else
  403: a page that re-binds its own domain to 127.0.0.1 (DNS rebinding) cannot use that door. With
  ``http.allowed_hosts`` set, every request must name one of them.
* **Bodies.** A JSON body of at most ``http.max_body_bytes`` (the API's and the hooks' limit) is read
  within ``http.client_timeout_s`` (408 for a client that sends it too slowly), and one nested deeper
  than ``MAX_JSON_DEPTH`` levels gets 400 before any parser sees it (Python's own parser would fail
  with a RecursionError: a 500). Larger, compressed or protobuf bodies are left to their handler's
  own limits (OTLP's ``otlp.max_message_bytes``).
* **Authorization.** A header that is not UTF-8 gets 400 (it cannot hold any token).

``ConnectionGuard`` wraps the server's connections (``Listening`` serves an application with it):

* at most ``http.max_connections_per_client`` open connections per client address: the next one is
  answered 503 and closed (a client cannot hold the port's file descriptors);
* a connection with no request in progress for ``http.client_timeout_s`` is closed: an idle
  keep-alive connection, a client that connects and sends nothing, and one that sends its headers a
  byte at a time (slowloris) alike.

``quiet_parse_errors`` keeps aiohttp from logging a malformed request at ERROR with the start of the
offending header (an ``Authorization`` header too long is logged with the token in it): one INFO
line without the content.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from watcher.config import HttpSettings
from watcher.errors import ConfigError

__all__ = ["MAX_JSON_DEPTH", "ConnectionGuard", "Listening", "json_depth", "middleware", "quiet_parse_errors"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_JSON_DEPTH = 64  # watcher's bodies nest 3 or 4 levels; Flagger's 3
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
_STRUCTURE = re.compile(rb'["\\\[\]{}]')


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (strings skipped; valid JSON or not).

    >>> json_depth(b'{"a": [1, {"b": "]]]"}]}'), json_depth(b"[" * 100), json_depth(b'"{"')
    (3, 100, 0)
    """
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the position a backslash in a string escapes
    for m in _STRUCTURE.finditer(raw):
        pos, c = m.start(), m.group()
        if in_string:
            if pos == escaped_at:
                continue
            if c == b"\\":
                escaped_at = pos + 1
            elif c == b'"':
                in_string = False
        elif c == b'"':
            in_string = True
        elif c in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (b"]", b"}"):
            depth -= 1
    return deepest


def _host_name(value: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8080`` -> ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _loopback_client(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def _refused(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def middleware(http: HttpSettings, guard: ConnectionGuard | None = None) -> Any:
    allowed_hosts = frozenset(h.lower() for h in http.allowed_hosts)
    allowed_origins = frozenset(o.rstrip("/").lower() for o in http.allowed_origins)
    tokenless_writes = http.auth_token is None

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        with guard.busy(request) if guard is not None else contextlib.nullcontext():
            refusal = await _refusal(request)
            return refusal if refusal is not None else await handler(request)

    async def _refusal(request: web.Request) -> web.Response | None:
        try:
            request.headers.get("Authorization", "").encode("utf-8")
        except UnicodeEncodeError:
            return _refused(400, "the Authorization header is not UTF-8")
        host = _host_name(request.host)
        if allowed_hosts and host not in allowed_hosts:
            return _refused(403, f"host {host!r} is not in http.allowed_hosts")
        if request.method not in WRITES:
            return None
        if (
            tokenless_writes
            and _loopback_client(request)
            and host not in LOOPBACK_HOSTS
            and host not in allowed_hosts
        ):
            return _refused(
                403,
                f"host {host!r} is not a loopback name: without http.auth_token, writes are taken only "
                "from loopback clients naming localhost, 127.0.0.1 or [::1] (or http.allowed_hosts)",
            )
        origin = request.headers.get("Origin")
        if origin is not None and origin != "null":
            parts = urlsplit(origin)
            same = _host_name(parts.netloc) == host and parts.netloc.lower() == request.host.lower()
            if not same and origin.rstrip("/").lower() not in allowed_origins:
                return _refused(403, f"origin {origin!r} may not write here (http.allowed_origins)")
        elif request.headers.get("Sec-Fetch-Site") == "cross-site" or origin == "null":
            return _refused(403, "a cross-site request may not write here")
        ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        json_body = bool(_JSON_TYPE.match(ctype))
        if not json_body and ctype not in _PROTOBUF_TYPES:
            return _refused(415, f"a write needs Content-Type: application/json (got {ctype or 'none'!r})")
        size = request.content_length
        plain = request.headers.get("Content-Encoding", "identity").lower() == "identity"
        if not (json_body and plain and size is not None and size <= http.max_body_bytes):
            return None  # the handler reads it within its own limits
        try:
            async with asyncio.timeout(http.client_timeout_s):
                raw = await request.read()  # kept by aiohttp: the handler reads the same bytes
        except TimeoutError:
            return _refused(408, f"the body did not arrive within {http.client_timeout_s:g}s")
        if json_depth(raw) > MAX_JSON_DEPTH:
            return _refused(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels")
        return None

    return check


@dataclass(slots=True)
class _Connection:
    peer: str
    idle_since: float
    busy: int = 0


@dataclass
class ConnectionGuard:
    """Per-client connection limits and the idle timeout (``serve`` listens with it)."""

    max_per_client: int
    client_timeout_s: float
    clock: Callable[[], float] = time.monotonic
    _conns: dict[Any, _Connection] = field(default_factory=dict)
    _per_peer: dict[str, int] = field(default_factory=dict)
    refused: int = 0  # connections refused over the per-client limit
    timed_out: int = 0  # connections closed for sending no complete request in time

    @contextlib.contextmanager
    def busy(self, request: web.Request) -> Any:
        conn = self._conns.get(request.transport)
        if conn is not None:
            conn.busy += 1
        try:
            yield
        finally:
            if conn is not None:
                conn.busy -= 1
                conn.idle_since = self.clock()

    def protocol(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, inner())

    def opened(self, transport: asyncio.Transport) -> bool:
        peer = str((transport.get_extra_info("peername") or ("?",))[0])
        if self._per_peer.get(peer, 0) >= self.max_per_client:
            self.refused += 1
            log.warning("connection from %s refused: it holds %d already", peer, self.max_per_client)
            body = b'{"error":"too many connections from this client"}'
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            transport.close()
            return False
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._conns[transport] = _Connection(peer, self.clock())
        return True

    def closed(self, transport: asyncio.Transport) -> None:
        conn = self._conns.pop(transport, None)
        if conn is not None:
            left = self._per_peer.get(conn.peer, 1) - 1
            if left > 0:
                self._per_peer[conn.peer] = left
            else:
                self._per_peer.pop(conn.peer, None)

    def sweep(self) -> int:
        """Close the connections without a request in progress for longer than the timeout."""
        now = self.clock()
        stale = [
            t for t, c in self._conns.items() if not c.busy and now - c.idle_since > self.client_timeout_s
        ]
        for transport in stale:
            transport.close()
        self.timed_out += len(stale)
        return len(stale)


def _listen_error(http: HttpSettings, exc: OSError) -> ConfigError:
    where = f"{http.host}:{http.port}"
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(
            "http.port",
            f"cannot listen on {where}: the port is in use (another watcher?); "
            "choose another one (--http-port, http.port or WATCHER_HTTP__PORT; 0 picks a free one)",
        )
    if exc.errno == errno.EACCES:
        return ConfigError("http.port", f"cannot listen on {where}: ports below 1024 need privileges")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            "http.host", f"cannot listen on {where}: no interface of this machine has that address"
        )
    return ConfigError("http.host", f"cannot listen on {where}: {exc.strerror or exc}")


class Listening:
    """An aiohttp application served behind the guard: ``await Listening.start(app, http)``, then
    ``port`` (the bound one, for ``http.port: 0``) and ``await close()``."""

    def __init__(
        self,
        runner: web.AppRunner,
        server: asyncio.Server,
        sweeper: asyncio.Task[None],
        guard: ConnectionGuard,
    ) -> None:
        self.runner, self.server, self.guard = runner, server, guard
        self._sweeper = sweeper
        self.port = int(server.sockets[0].getsockname()[1]) if server.sockets else 0

    @classmethod
    async def start(cls, app: web.Application, http: HttpSettings, guard: ConnectionGuard) -> Listening:
        quiet_parse_errors()
        # aiohttp's own keep-alive timeout too (newer versions also start it at connect)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=http.client_timeout_s)
        await runner.setup()
        assert runner.server is not None
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                guard.protocol(runner.server), http.host, http.port, reuse_address=True
            )
        except (
            OSError
        ) as exc:  # a port taken or privileged, a host not of this machine: told, not a traceback
            await runner.cleanup()
            raise _listen_error(http, exc) from exc

        async def sweeping() -> None:
            while True:
                await asyncio.sleep(min(1.0, guard.client_timeout_s / 2))
                guard.sweep()

        return cls(runner, server, asyncio.create_task(sweeping(), name="http-connection-guard"), guard)

    async def close(self) -> None:
        self._sweeper.cancel()
        self.server.close()
        await self.runner.cleanup()  # ends the open connections, in-flight requests first


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol behind the guard: the limit at connect, the bookkeeping at close."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard, self._inner = guard, inner
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._guard.opened(transport):
            self._transport = transport
            self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.closed(self._transport)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._transport is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _ParseErrors(logging.Filter):
    """aiohttp's "Error handling request" for a request it could not parse: one INFO line, without
    the offending bytes (they can hold a token), instead of an ERROR with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "a client"
            record.msg = "malformed request from %s refused with %s: %s"
            record.args = (peer, getattr(exc, "code", 400), type(exc).__name__)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


_FILTER = _ParseErrors()


def quiet_parse_errors() -> None:
    """Install the filter on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
