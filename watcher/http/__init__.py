"""The HTTP side (layer: I/O). ``Api``: the JSON API (rollouts, decisions, verdicts, markers,
acknowledge/override); ``auth``: bearer tokens and the loopback rule; ``flagger`` and
``flagger_protocol``: Flagger's webhooks (the pure answers and their HTTP side); ``otlp``: OTLP/HTTP
in (``POST /v1/traces``, ``OtlpReceiver``); ``peers``: which instance owns which partition, and
forwarding to it.
"""

from __future__ import annotations

from watcher.http.api import Api
from watcher.http.auth import middleware as auth_middleware
from watcher.http.flagger import FlaggerHooks
from watcher.http.otlp import OTLP_TRACES, OtlpReceiver
from watcher.http.peers import Peers, advertising_assignor, forwarding_middleware

__all__ = [
    "Api",
    "auth_middleware",
    "FlaggerHooks",
    "OTLP_TRACES",
    "OtlpReceiver",
    "Peers",
    "advertising_assignor",
    "forwarding_middleware",
]
