"""The outbox over HTTP (``/v1/deliveries``): list and read deliveries, retry failed ones (one, or
every failed one of a sink) and dismiss one an operator will not send. Kept apart from the rollout
API (``watcher.http.api``), which mounts these routes, because it answers for a different thing:
what watcher owes the sinks, not what it decided."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from aiohttp import web

from watcher.http.replies import error_reply, json_reply, read_object

__all__ = ["DELIVERY_STATES", "Deliveries", "DeliveryRoutes", "NoDeliveries"]

log = logging.getLogger(__name__)

DELIVERY_STATES = ("pending", "delivered", "failed", "dismissed")


class Deliveries(Protocol):
    """The outbox as the API sees it (``watcher.outbox.Outbox``)."""

    def deliveries(
        self, *, sink: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def delivery(self, seq: int) -> dict[str, Any] | None: ...

    def redrive(self, *, seq: int | None = None, sink: str | None = None) -> list[int]: ...

    def dismiss(self, seq: int, why: str) -> bool: ...


class NoDeliveries:
    """No outbox (tests, a daemon built without one): nothing queued."""

    def deliveries(
        self, *, sink: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return []

    def delivery(self, seq: int) -> dict[str, Any] | None:
        return None

    def redrive(self, *, seq: int | None = None, sink: str | None = None) -> list[int]:
        return []

    def dismiss(self, seq: int, why: str) -> bool:
        return False


class DeliveryRoutes:
    def __init__(self, outbox: Deliveries, max_body_bytes: int) -> None:
        self.outbox = outbox
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/deliveries", self.deliveries),
            web.get("/v1/deliveries/{id}", self.delivery),
            web.post("/v1/deliveries/retry", self.redrive_sink),
            web.post("/v1/deliveries/{id}/retry", self.redrive),
            web.post("/v1/deliveries/{id}/dismiss", self.dismiss),
        ]

    async def deliveries(self, request: web.Request) -> web.Response:
        """``?state=`` (or ``status=``) pending|delivered|failed|dismissed, ``sink=``, ``limit=``."""
        q = request.query
        state = q.get("state", q.get("status"))
        if state is not None and state not in DELIVERY_STATES:
            return error_reply(400, f"'state' must be one of {', '.join(DELIVERY_STATES)}; got {state!r}")
        try:
            limit = min(int(q.get("limit", "100")), 1000)
        except ValueError:
            return error_reply(400, "'limit' must be an integer")
        rows = self.outbox.deliveries(sink=q.get("sink"), status=state, limit=limit)
        return json_reply({"deliveries": rows})

    def _delivery(self, request: web.Request) -> tuple[int, dict[str, Any]] | web.Response:
        try:
            seq = int(request.match_info["id"])
        except ValueError:
            seq = -1
        found = self.outbox.delivery(seq) if seq >= 0 else None
        if found is None:
            return error_reply(404, "no such delivery", id=request.match_info["id"])
        return seq, found

    async def delivery(self, request: web.Request) -> web.Response:
        found = self._delivery(request)
        return found if isinstance(found, web.Response) else json_reply(found[1])

    async def redrive(self, request: web.Request) -> web.Response:
        """A failed delivery pending again, with a fresh retry budget (its lane's order kept)."""
        found = self._delivery(request)
        if isinstance(found, web.Response):
            return found
        seq, row = found
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        if row["status"] != "failed":
            return error_reply(409, f"only a failed delivery can be retried; this one is {row['status']}")
        self.outbox.redrive(seq=seq)
        log.warning("delivery %s re-driven by %s", seq, body.get("actor") or request.remote)
        return json_reply({"delivery": self.outbox.delivery(seq)}, status=202)

    async def redrive_sink(self, request: web.Request) -> web.Response:
        """Every failed delivery of ``?sink=`` (or of every sink) pending again."""
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        sink = request.query.get("sink")
        ids = self.outbox.redrive(sink=sink)
        log.warning(
            "%d failed deliveries of %s re-driven by %s",
            len(ids),
            f"sink {sink}" if sink else "every sink",
            body.get("actor") or request.remote,
        )
        return json_reply({"retried": ids}, status=202)

    async def dismiss(self, request: web.Request) -> web.Response:
        """``{"actor", "reason"}``: a failed delivery an operator will not send (kept, not alerting)."""
        found = self._delivery(request)
        if isinstance(found, web.Response):
            return found
        seq, row = found
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        actor, reason = body.get("actor"), body.get("reason")
        if not isinstance(actor, str) or not 0 < len(actor) <= 128:
            return error_reply(400, "field 'actor' is required: a string of 1-128 characters")
        if not isinstance(reason, str) or not 0 < len(reason) <= 1024:
            return error_reply(400, "field 'reason' is required: a string of 1-1024 characters")
        if not self.outbox.dismiss(seq, f"dismissed by {actor}: {reason}"):
            return error_reply(409, f"only a failed delivery can be dismissed; this one is {row['status']}")
        return json_reply({"delivery": self.outbox.delivery(seq)})

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        return await read_object(request, self.max_body_bytes)
