"""The ``hooks`` settings: which deployer objects (Flagger Canaries) drive which watcher rollouts.

Kept apart from the webhook handler (``watcher.http.flagger``) because ``watcher.config`` imports it: it
must stay light (no aiohttp, no engine) and free of import cycles.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from watcher.errors import ConfigError

__all__ = ["MAX_NAME", "FlaggerTarget", "HooksSettings", "validate_targets"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # RFC 1123 label: a namespace
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # RFC 1123 subdomain: an object name
MAX_NAME = 253  # a Kubernetes object name (RFC 1123 subdomain)


@dataclass(frozen=True)
class FlaggerTarget:
    """One Flagger Canary (namespace/name) and the watcher rollouts it drives (agent/environment)."""

    namespace: str
    name: str
    agent_id: str
    environment: str = "prod"

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every invalid value; validated with its index by ``HooksSettings``."""
        out: list[tuple[str, str]] = []
        ns, name = self.namespace, self.name
        if not isinstance(ns, str) or len(ns) > 63 or not _DNS_LABEL.match(ns):
            out.append(("namespace", f"must be a Kubernetes namespace (RFC 1123 label), got {ns!r}"))
        if not isinstance(name, str) or len(name) > MAX_NAME or not _DNS_SUBDOMAIN.match(name):
            out.append(("name", f"must be a Kubernetes object name (RFC 1123 subdomain), got {name!r}"))
        for name, value in (("agent_id", self.agent_id), ("environment", self.environment)):
            if not isinstance(value, str) or not 0 < len(value) <= 128:
                out.append((name, f"must be a string of 1-128 characters, got {value!r}"))
        return out


@dataclass(frozen=True)
class HooksSettings:
    """The ``hooks`` section: which deployer objects map to which agent/environment."""

    flagger: tuple[FlaggerTarget, ...] = ()
    # While the instances rebalance (the agent's owner unknown, or this one restoring it), a Flagger
    # hook waits this long for it to settle, then answers from the last decision it knows: keep it
    # below the webhooks' `timeout` (Flagger's default 10 s; the examples use 5 s)
    wait_s: float = 4.0

    def __post_init__(self) -> None:
        validate_targets(self.flagger, "hooks.flagger")
        if not 0.0 <= self.wait_s < 10.0:
            raise ConfigError("hooks.wait_s", f"must be 0..10 s (below Flagger's timeout), got {self.wait_s}")


def validate_targets(targets: Sequence[FlaggerTarget], where: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, target in enumerate(targets):
        problems = target.problems()
        if problems:
            raise ConfigError(f"{where}[{i}].{problems[0][0]}", problems[0][1])
        key = (target.namespace, target.name)
        if key in seen:
            first = f"{where}[{seen[key]}]"
            raise ConfigError(f"{where}[{i}]", f"canary {'/'.join(key)} is already mapped by {first}")
        seen[key] = i
