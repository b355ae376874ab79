"""The HTTP side (layer: I/O). ``Api``: the JSON API (rollouts, decisions, verdicts, markers,
acknowledge/override); ``deliveries``: the outbox's deliveries (listed, retried, dismissed), mounted
by ``Api``; ``replies``: the JSON replies and body rules both share; ``guard``: what the port
refuses before any handler (writes in a browser's own formats, foreign origins and hosts, deep or
slow bodies, too many or idle connections); ``auth``: bearer tokens and the loopback rule;
``flagger`` and ``flagger_protocol``: Flagger's webhooks (the pure answers and their HTTP side);
``otlp``: OTLP/HTTP in (``POST /v1/traces``, ``OtlpReceiver``); ``peers``: which instance owns which
partition, and forwarding to it.
"""

from __future__ import annotations

from watcher.http.api import Api
from watcher.http.auth import middleware as auth_middleware
from watcher.http.flagger import FlaggerHooks
from watcher.http.guard import ConnectionGuard, Listening
from watcher.http.guard import middleware as guard_middleware
from watcher.http.otlp import OTLP_TRACES, OtlpReceiver
from watcher.http.peers import Peers, advertising_assignor, forwarding_middleware, own_url

__all__ = [
    "Api",
    "ConnectionGuard",
    "auth_middleware",
    "FlaggerHooks",
    "guard_middleware",
    "Listening",
    "OTLP_TRACES",
    "OtlpReceiver",
    "Peers",
    "advertising_assignor",
    "forwarding_middleware",
    "own_url",
]
