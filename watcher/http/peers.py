"""Which instance owns which partition, and forwarding a request to it.

With several instances (``checkpoint.scope: partition``) an agent's rollouts live in the instance
that owns the agent's partition, while a deployer's webhook (Flagger, Argo Rollouts) reaches any
instance behind a Service. As Kafka Streams does for its interactive queries, each member advertises
its HTTP address in its group metadata; the group leader's assignor puts the whole map partition ->
address into every member's assignment, so every instance knows every owner after each rebalance.
A request about an agent another instance owns is forwarded to it (once: a forwarded request carries
``X-Watcher-Forwarded`` and is always answered where it lands), and its answer is returned as is. A
request for a rollout id this instance does not hold is asked of the other owners in turn.

When the owner is unknown (mid-rebalance, or it did not answer) the answer is 503, which every
hook treats as "not ready": gates hold, checks never fail a canary over it.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from watcher.engine import partition_for

__all__ = ["FORWARDED_HEADER", "Peers", "advertising_assignor", "own_url"]

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Watcher-Forwarded"
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def advertising_assignor(address: Callable[[], str], on_owners: Callable[[dict[int, str]], None]) -> type:
    """A range assignor (partition p of every topic to the same member) whose members advertise
    ``address()`` and learn, with their assignment, the address of every partition's owner."""
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

    class WatcherRangeAssignor(RangePartitionAssignor):
        name = "watcher-range"

        @classmethod
        def metadata(cls, topics: Iterable[str]) -> Any:
            return ConsumerProtocolMemberMetadata(cls.version, list(topics), address().encode())

        @classmethod
        def assign(cls, cluster: Any, members: Mapping[str, Any]) -> dict[str, Any]:
            plain = super().assign(cluster, members)
            owners: dict[str, str] = {}
            for member_id, assignment in plain.items():
                url = bytes(members[member_id].user_data or b"").decode(errors="replace")
                for _topic, partitions in assignment.assignment:
                    for p in partitions:
                        owners[str(p)] = url
            shared = json.dumps({"v": 1, "owners": owners}).encode()
            return {
                mid: ConsumerProtocolMemberAssignment(a.version, a.assignment, shared)
                for mid, a in plain.items()
            }

        @classmethod
        def on_assignment(cls, assignment: Any) -> None:
            try:
                doc = json.loads(bytes(assignment.user_data or b"{}"))
                owners = {int(p): str(url) for p, url in doc.get("owners", {}).items()}
            except (ValueError, TypeError, AttributeError):
                log.warning("assignment without owner addresses: requests are answered locally")
                owners = {}
            on_owners(owners)

    return WatcherRangeAssignor


class Peers:
    """The owners' addresses, and forwarding requests to them."""

    def __init__(
        self,
        *,
        partition_count: Callable[[], int | None],
        is_local: Callable[[int], bool],
        holds_rollout: Callable[[str], bool] = lambda _id: True,
        timeout_s: float = 10.0,
        session_factory: Callable[[], ClientSession] | None = None,
    ) -> None:
        self.owners: dict[int, str] = {}
        self.address = ""  # this instance's, as advertised
        self._partition_count = partition_count
        self._is_local = is_local
        self.holds_rollout = holds_rollout
        self._timeout = ClientTimeout(total=timeout_s)
        self._session_factory = session_factory
        self._session: ClientSession | None = None

    def set_owners(self, owners: dict[int, str]) -> None:
        self.owners = dict(owners)
        log.info("partition owners: %s", ", ".join(f"{p}={u}" for p, u in sorted(owners.items())) or "none")

    def owner_of_agent(self, agent_id: str) -> str | None:
        """None when this instance owns the agent (answer locally); the owner's address otherwise
        ("" when it is not known)."""
        count = self._partition_count()
        if count is None:
            return None  # nothing known yet: answer locally, as one instance would
        partition = partition_for(agent_id, count)
        if self._is_local(partition):
            return None
        url = self.owners.get(partition, "")
        return None if url == self.address and url else url

    @staticmethod
    def forwarded(request: web.Request) -> bool:
        """A request another instance forwarded is answered here, never forwarded again."""
        return FORWARDED_HEADER in request.headers

    def others(self) -> list[str]:
        return sorted({u for u in self.owners.values() if u and u != self.address})

    async def forward(self, request: web.Request, url: str, body: bytes | None = None) -> web.Response:
        """``request`` as sent to ``url`` (same method, path, query, headers, body), and its answer."""
        if not url:
            return _unavailable(
                "the instance that owns this agent is not known yet (the group is rebalancing)"
            )
        if body is None:
            body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        headers[FORWARDED_HEADER] = self.address or "1"
        try:
            async with self._client().request(
                request.method,
                url.rstrip("/") + request.path_qs,
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                out = web.Response(
                    status=resp.status, body=payload, content_type=resp.content_type or "application/json"
                )
                out.headers["X-Watcher-Owner"] = url
                return out
        except Exception as exc:
            log.warning("forwarding %s %s to %s failed: %r", request.method, request.path, url, exc)
            return _unavailable(f"the instance that owns this agent ({url}) did not answer")

    async def ask_others(self, request: web.Request) -> web.Response | None:
        """The first answer other than 404 from the other owners (a rollout this instance does not hold)."""
        body = await request.read()
        for url in self.others():
            resp = await self.forward(request, url, body)
            if resp.status not in (404, 503):
                return resp
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> ClientSession:
        if self._session is None:
            self._session = (
                self._session_factory() if self._session_factory else ClientSession(timeout=self._timeout)
            )
        return self._session


def _unavailable(reason: str) -> web.Response:
    return web.json_response({"error": reason, "retry": True}, status=503, headers={"Retry-After": "2"})


def forwarding_middleware(peers: Peers) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Forwards the API's per-agent and per-rollout requests to the instance that can answer them."""

    @web.middleware
    async def route_to_owner(
        request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if FORWARDED_HEADER in request.headers:
            return await handler(request)
        path = request.path
        if path == "/v1/verdict" and request.query.get("agent"):
            owner = peers.owner_of_agent(request.query["agent"])
            if owner is not None:
                return await peers.forward(request, owner)
            return await handler(request)
        rollout_id = request.match_info.get("rollout_id")
        if path.startswith("/v1/rollouts/") and rollout_id and not peers.holds_rollout(rollout_id):
            found = await peers.ask_others(request)  # the instance that holds it answers
            if found is not None:
                return found
        return await handler(request)

    return route_to_owner


def own_url(host: str, port: int) -> str:
    """How other instances reach this one when ``http.advertised_url`` does not say."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
