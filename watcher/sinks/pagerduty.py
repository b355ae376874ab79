"""PagerDuty Events API v2: page on pause/rollback, resolve when the rollout is settled, change events
for deployment markers.

* ``trigger`` (``POST {url}/v2/enqueue``) on a ``pause`` or ``rollback`` decision. The ``dedup_key`` is
  ``watcher/<rollout_id>``: a pause followed by a rollback updates one alert (raising it to
  critical) instead of paging twice.
* ``resolve`` with the same key when the rollout is promoted or resumed (decision or marker), or ended
  by a deployer's marker (the canary is gone). Only if watcher triggered it (sink state
  ``open:<rollout_id>``): resolving keys that were never triggered is noise. A rollout ended by watcher
  itself (no marker) after a rollback is *not* resolved: nobody has confirmed the rollback happened.
* ``change`` events (``POST {url}/v2/change/enqueue``) for every deployment marker.

Statuses: 202 accepted; 400 invalid (permanent); 429 and 5xx retried (``sink_http.classify``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta

from watcher.config import SECRET
from watcher.contract import Item, ItemKind
from watcher.sinks.base import (
    NULL_STATE,
    HttpUrl,
    Request,
    SinkContext,
    SinkSettings,
    SinkState,
    SinkType,
    links,
    truncate,
)
from watcher.sinks.webhook import HttpSink

__all__ = ["PAGERDUTY", "PagerDutySettings", "PagerDutySink", "dedup_key"]

SUMMARY_MAX = 1024
DEDUP_MAX = 255
_TRIGGER = frozenset({"pause", "rollback"})
_RESOLVE = frozenset({"promote", "resume"})


def dedup_key(rollout_id: str) -> str:
    return f"watcher/{rollout_id}"[:DEDUP_MAX]


class PagerDutySettings(SinkSettings, tag="pagerduty", frozen=True, kw_only=True):
    """``type: pagerduty``: Events API v2 with an integration's ``routing_key``."""

    routing_key: Annotated[Annotated[str, Meta(min_length=1)], SECRET]  # the integration key
    url: HttpUrl = "https://events.pagerduty.com"  # the Events API's base URL (EU: events.eu.pagerduty.com)
    api_url: HttpUrl | None = None  # watcher's own external URL, for links in incidents
    dashboard_url: HttpUrl | None = None  # may hold {agent_id}, {environment}, {rollout_id}
    pause_severity: Literal["warning", "error"] = "warning"  # of a pause (a rollback is always critical)
    source: str | None = None  # payload.source; None: "watcher/<agent>/<environment>"

    DEFAULT_KINDS: ClassVar[tuple[ItemKind, ...]] = (ItemKind.DECISION, ItemKind.MARKER)


class PagerDutySink(HttpSink[PagerDutySettings]):
    def _url(self, path: str) -> str:
        return self.settings.url.rstrip("/") + path

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        r = item.record
        if item.kind is ItemKind.DECISION:
            rollout_id = r["rollout"]["rollout_id"]
            if r["action"] in _TRIGGER:
                return [
                    Request(
                        kind="trigger",
                        url=self._url("/v2/enqueue"),
                        body=self._trigger(item),
                        remember=f"open:{rollout_id}",
                    )
                ]
            if r["action"] in _RESOLVE:
                return self._resolve(rollout_id, state)
            return []
        if item.kind is ItemKind.MARKER:
            rollout = r["rollout"]
            out: list[Request] = []
            if r["marker"] is not None:
                out.append(
                    Request(kind="change", url=self._url("/v2/change/enqueue"), body=self._change(item))
                )
            settled = (
                rollout["state"] == "promoted"
                or (r["kind"] == "ended" and r["marker"] is not None)
                or (
                    r["kind"] == "updated"
                    and rollout["state"] == "running"
                    and (r["marker"] or {}).get("action") == "resumed"
                )
            )
            if settled:
                out.extend(self._resolve(rollout["rollout_id"], state))
            return out
        return []  # drift is a signal for humans to look at, not a page: use Slack or a webhook

    def remembered(self, request: Request, payload: Any) -> Any:
        return "open" if request.kind == "trigger" else "resolved"

    # -- payloads -------------------------------------------------------------------------------
    def _resolve(self, rollout_id: str, state: SinkState) -> list[Request]:
        if state.get(f"open:{rollout_id}") != "open":
            return []
        body = {
            "routing_key": self.settings.routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(rollout_id),
        }
        return [
            Request(kind="resolve", url=self._url("/v2/enqueue"), body=body, remember=f"open:{rollout_id}")
        ]

    def _trigger(self, item: Item) -> dict[str, Any]:
        r = item.record
        ro = r["rollout"]
        severity = "critical" if r["action"] == "rollback" else self.settings.pause_severity
        trigger = r.get("trigger") or {}
        failing = [e for e in r.get("evidence", []) if e.get("verdict") == "fail"]
        details: dict[str, Any] = {
            "decision_id": r["decision_id"],
            "action": r["action"],
            "cause": r["cause"],
            "reason": r["reason"],
            "rollout_id": ro["rollout_id"],
            "strategy": ro["strategy"],
            "baseline_version": ro["baseline_version"],
            "canary_version": ro["canary_version"],
            "canary_weight": ro["canary_weight"],
            "trigger": trigger or None,
            "failing": [e["reason"] for e in failing[:10]],
            "failing_total": len(failing),
            "sample_ratio": (r.get("sample_ratio") or {}).get("reason"),
        }
        return {
            "routing_key": self.settings.routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key(ro["rollout_id"]),
            "client": "watcher",
            **({"client_url": self.settings.api_url} if self.settings.api_url else {}),
            "payload": {
                "summary": truncate(r["reason"] or f"{r['action']} {ro['agent_id']}", SUMMARY_MAX),
                "source": self._source(ro["agent_id"], ro["environment"]),
                "severity": severity,
                "timestamp": r["ts"],
                "component": ro["agent_id"],
                "group": ro["environment"],
                "class": trigger.get("metric") or r["cause"],
                "custom_details": details,
            },
            "links": [
                {"href": url, "text": text}
                for text, url in links(self.settings.api_url, self.settings.dashboard_url, r)
            ],
        }

    def _change(self, item: Item) -> dict[str, Any]:
        r = item.record
        ro = r["rollout"]
        marker = r["marker"] or {}
        action = marker.get("action") or r["kind"]
        summary = (
            f"{ro['agent_id']}/{ro['environment']}: {action} {ro['canary_version'] or ''} "
            f"(baseline {ro['baseline_version'] or '?'}, {ro['strategy']}, "
            f"weight {ro['canary_weight']})"
        )
        return {
            "routing_key": self.settings.routing_key,
            "payload": {
                "summary": truncate(summary, SUMMARY_MAX),
                "timestamp": r["ts"],
                "source": self._source(ro["agent_id"], ro["environment"]),
                "custom_details": {
                    "rollout_id": ro["rollout_id"],
                    "state": ro["state"],
                    "change": r["kind"],
                    "marker": marker or None,
                },
            },
            "links": [
                {"href": url, "text": text}
                for text, url in links(self.settings.api_url, self.settings.dashboard_url, r)
            ],
        }

    def _source(self, agent: str, env: str) -> str:
        return self.settings.source or f"watcher/{agent}/{env}"


def _build(settings: PagerDutySettings, ctx: SinkContext) -> PagerDutySink:
    return PagerDutySink(settings, session_factory=ctx.session_factory, clock=ctx.clock)


PAGERDUTY = SinkType(PagerDutySettings, _build)
