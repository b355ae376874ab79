"""The ``hooks`` settings: which deployer objects (Flagger Canaries) drive which watcher rollouts.

Kept apart from the webhook handler (``watcher.http.flagger``) because ``watcher.config`` imports it: it
must stay light (no aiohttp, no engine) and free of import cycles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

from watcher.config.validate import PATTERNS, Section, convert
from watcher.errors import ConfigError

__all__ = ["MAX_NAME", "FlaggerTarget", "HooksSettings", "validate_targets"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # RFC 1123 label: a namespace
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # RFC 1123 subdomain: an object name
PATTERNS[DNS_LABEL] = "must be a Kubernetes namespace (RFC 1123 label)"
PATTERNS[DNS_SUBDOMAIN] = "must be a Kubernetes object name (RFC 1123 subdomain)"
MAX_NAME = 253  # a Kubernetes object name (RFC 1123 subdomain)

Label = Annotated[str, Meta(min_length=1, max_length=128)]


class FlaggerTarget(Section, frozen=True):
    """One Flagger Canary (namespace/name) and the watcher rollouts it drives (agent/environment)."""

    namespace: Annotated[str, Meta(pattern=DNS_LABEL, max_length=63)]
    name: Annotated[str, Meta(pattern=DNS_SUBDOMAIN, max_length=MAX_NAME)]
    agent_id: Label
    environment: Label = "prod"


class HooksSettings(Section, frozen=True):
    """The ``hooks`` section: which deployer objects map to which agent/environment."""

    flagger: tuple[FlaggerTarget, ...] = ()
    # While the instances rebalance (the agent's owner unknown, or this one restoring it), a Flagger
    # hook waits this long for it to settle, then answers from the last decision it knows: keep it
    # below the webhooks' `timeout` (Flagger's default 10 s; the examples use 5 s)
    wait_s: Annotated[float, Meta(ge=0, lt=10)] = 4.0

    def __post_init__(self) -> None:
        _unique(self.flagger, "hooks.flagger")


def validate_targets(targets: Sequence[FlaggerTarget], where: str) -> None:
    """Targets built in code are checked as the configuration's are (``ConfigError`` naming
    ``<where>[<i>].<field>``), and a Canary may be mapped only once."""
    convert([msgspec.to_builtins(t) for t in targets], tuple[FlaggerTarget, ...], where)
    _unique(targets, where)


def _unique(targets: Sequence[FlaggerTarget], where: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, target in enumerate(targets):
        key = (target.namespace, target.name)
        if key in seen:
            first = f"{where}[{seen[key]}]"
            raise ConfigError(f"{where}[{i}]", f"canary {'/'.join(key)} is already mapped by {first}")
        seen[key] = i
