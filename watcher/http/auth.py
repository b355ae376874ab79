"""Who may call what: bearer tokens on the HTTP API, compared in constant time.

* ``/healthz``, ``/readyz``, ``/metrics``: open (probes and scrapers).
* Mutating endpoints (``POST /v1/deployments``, acknowledge, override): ``http.auth_token``. With no
  token configured they answer only clients on loopback, so a fresh install is not an open door.
* OTLP/HTTP in (``POST /v1/traces``): ``http.otlp_token`` if set, else the mutating rule above (agents
  and Collectors get a token that lets them send telemetry and nothing more).
* Flagger hooks (``/v1/flagger/*``, some of which create markers): ``http.flagger_token`` if set,
  else the mutating rule above. Flagger's webhooks cannot carry headers (fluxcd/flagger#1192), so
  these paths also take the token where Flagger can put it: as the password of the hook URL's user
  info (``http://flagger:TOKEN@watcher:8080/v1/flagger/rollout``, which Go's HTTP client sends as
  basic auth, and which Flagger's error messages redact) or as a ``token`` query parameter.
* Argo's verdict endpoints: ``http.argo_token`` or ``http.read_token`` if either is set, else open.
* Every other read endpoint: ``http.read_token`` if set, else open.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from watcher.config import HttpSettings
from watcher.http.otlp import OTLP_TRACES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MUTATING_SUFFIXES = ("/acknowledge", "/override")
FLAGGER_PATHS = "/v1/flagger/"
TOKEN_PARAMETER = "token"  # ?token=... on Flagger's hook URLs


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _basic_password(request: web.Request) -> str | None:
    """The password of ``Authorization: Basic`` (the user name is not checked: any will do)."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None


def _presented(request: web.Request) -> list[str]:
    """Every credential the request carries in a place its caller can use."""
    found = [_bearer(request)]
    if request.path.startswith(FLAGGER_PATHS):  # what Flagger can send: no headers of its own
        found += [_basic_password(request), request.query.get(TOKEN_PARAMETER)]
    return [c for c in found if c]


def _matches(presented: list[str], *tokens: str | None) -> bool:
    # every pair is compared, so the time taken does not say which one nearly matched
    results = [hmac.compare_digest(c.encode(), t.encode()) for c in presented for t in tokens if t]
    return any(results)


def _loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def _denied(status: int, message: str, flagger: bool = False) -> web.Response:
    challenge = 'Basic realm="watcher", Bearer realm="watcher"' if flagger else 'Bearer realm="watcher"'
    headers = {"WWW-Authenticate": challenge} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def required(request: web.Request, http: HttpSettings) -> tuple[tuple[str | None, ...], bool]:
    """The tokens that open this request (empty: open) and whether loopback suffices without one."""
    path = request.path
    if path in OPEN_PATHS:
        return (), False
    if path == OTLP_TRACES:
        if http.otlp_token:
            return (http.otlp_token,), False
        return (http.auth_token,), True
    if path.startswith(FLAGGER_PATHS):
        if http.flagger_token:
            return (http.flagger_token,), False
        return (http.auth_token,), True
    if request.method != "GET" or path.endswith(MUTATING_SUFFIXES):
        return (http.auth_token,), True
    if path == "/v1/verdict" or path.endswith("/verdict"):
        return (http.argo_token, http.read_token), False
    return (http.read_token,), False


def middleware(http: HttpSettings) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        tokens, loopback_ok = required(request, http)
        configured = [t for t in tokens if t]
        flagger = request.path.startswith(FLAGGER_PATHS)
        if not configured:
            if not loopback_ok or _loopback(request):
                return await handler(request)
            if flagger:
                return _denied(
                    403,
                    "Flagger's hooks change rollouts: set http.flagger_token and put it in the hook "
                    "URL, e.g. http://flagger:<token>@watcher:8080/v1/flagger/rollout (Flagger "
                    "cannot send headers; without a token only loopback clients may call)",
                )
            return _denied(
                403,
                "this endpoint changes rollouts: set http.auth_token and send it as a "
                "bearer token (without a token only loopback clients may call it)",
            )
        if _matches(_presented(request), *configured):
            return await handler(request)
        if flagger:
            return _denied(
                401,
                "missing or wrong token: give http.flagger_token as the password of the hook URL "
                "(http://flagger:<token>@host/...), as ?token=<token> or as a bearer token",
                flagger=True,
            )
        return _denied(401, "missing or wrong bearer token")

    return authorize
