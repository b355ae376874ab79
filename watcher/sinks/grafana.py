"""Grafana annotations: a region per rollout, a point per decision.

* rollout ``started``: ``POST /api/annotations`` with ``time`` = the start (ms). The id Grafana answers is
  kept in the outbox store (``region:<rollout_id>``), so the region can be closed after a restart.
* rollout ``ended``: ``PATCH /api/annotations/<id>`` with ``timeEnd`` (and the outcome in the text and
  tags). If the start was never annotated (the sink was added mid-rollout, or the start failed
  permanently) the whole region is posted at once instead.
* rollout ``updated`` (paused, resumed, weight changed) and decisions, drift: point annotations whose
  text is the reason.

Tags: ``watcher``, ``agent:<id>``, ``env:<env>``, ``version:<canary>``, ``rollout:<id>`` and the kind
(``decision:<action>``, ``marker:<action>``, ``drift:<metric>``), plus the configured ``tags``; a
dashboard finds organisation annotations by these tags. Grafana keeps tags of at most 100 characters
while agent ids and versions may have 128: a longer tag is cut to 91 characters plus ``~`` and 8 hex
digits of its hash, so two long ids never share a tag. Auth: ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar

from msgspec import Meta

from watcher.config import SECRET
from watcher.contract import Item, ItemKind
from watcher.sinks.base import NULL_STATE, HttpUrl, Request, SinkContext, SinkSettings, SinkState, SinkType
from watcher.sinks.webhook import HttpSink

__all__ = ["GRAFANA", "MAX_TAG", "GrafanaSettings", "GrafanaSink", "fit_tag"]

MAX_TAG = 100  # Grafana's limit on a tag's length


def _ms(ts: float) -> int:
    return round(ts * 1000)


def fit_tag(tag: str) -> str:
    """``tag`` if Grafana can keep it, else a cut that stays unique (a hash of the whole tag)."""
    if len(tag) <= MAX_TAG:
        return tag
    return tag[: MAX_TAG - 9] + "~" + hashlib.sha256(tag.encode()).hexdigest()[:8]


class GrafanaSettings(SinkSettings, tag="grafana", frozen=True, kw_only=True):
    """``type: grafana``: annotations through Grafana's HTTP API at ``url``."""

    url: HttpUrl  # Grafana's base URL
    token: Annotated[Annotated[str, Meta(min_length=1)], SECRET]  # a service-account token
    dashboard_uid: str | None = None  # attach annotations to this dashboard (None: the organisation)
    panel_id: int | None = None
    tags: tuple[Annotated[str, Meta(min_length=1, max_length=MAX_TAG)], ...] = ()  # extra tags

    DEFAULT_KINDS: ClassVar[tuple[ItemKind, ...]] = (ItemKind.DECISION, ItemKind.MARKER)


class GrafanaSink(HttpSink[GrafanaSettings]):
    def headers(self, request: Request, body: bytes) -> dict[str, str]:
        out = super().headers(request, body)
        out["Authorization"] = f"Bearer {self.settings.token}"
        return out

    def remembered(self, request: Request, payload: Any) -> Any:
        if isinstance(payload, dict) and isinstance(payload.get("id"), int):
            return payload["id"]
        return None

    def _api(self, path: str) -> str:
        return self.settings.url.rstrip("/") + path

    def _tags(
        self, agent: str, env: str, version: str | None, rollout_id: str | None, kind: str
    ) -> list[str]:
        tags = ["watcher", f"agent:{agent}", f"env:{env}"]
        if version:
            tags.append(f"version:{version}")
        if rollout_id:
            tags.append(f"rollout:{rollout_id}")
        return [fit_tag(t) for t in (*tags, kind, *self.settings.tags)]

    def _scope(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.settings.dashboard_uid:
            out["dashboardUID"] = self.settings.dashboard_uid
        if self.settings.panel_id is not None:
            out["panelId"] = self.settings.panel_id
        return out

    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        r = item.record
        if item.kind is ItemKind.DECISION:
            ro = r["rollout"]
            body = {
                **self._scope(),
                "time": _ms(r["ts_unix"]),
                "text": r["reason"],
                "tags": self._tags(
                    ro["agent_id"],
                    ro["environment"],
                    ro["canary_version"],
                    ro["rollout_id"],
                    f"decision:{r['action']}",
                ),
            }
            return [Request(kind="point", url=self._api("/api/annotations"), body=body)]
        if item.kind is ItemKind.DRIFT:
            body = {
                **self._scope(),
                "time": _ms(r["ts_unix"]),
                "text": r["reason"],
                "tags": self._tags(
                    r["agent_id"], r["environment"], r["version"], None, f"drift:{r['metric']}"
                ),
            }
            return [Request(kind="point", url=self._api("/api/annotations"), body=body)]
        return self._rollout(r, state)

    def _rollout(self, r: dict[str, Any], state: SinkState) -> list[Request]:
        ro = r["rollout"]
        rid = ro["rollout_id"]
        marker = r.get("marker") or {}
        title = (
            f"Rollout {ro['agent_id']}/{ro['environment']}: canary {ro['canary_version']} vs baseline "
            f"{ro['baseline_version']} ({ro['strategy']}, weight {ro['canary_weight']})"
        )
        if r["kind"] == "started":
            body = {
                **self._scope(),
                "time": _ms(ro["started_ts"]),
                "text": title,
                "tags": self._tags(
                    ro["agent_id"], ro["environment"], ro["canary_version"], rid, "marker:started"
                ),
            }
            return [
                Request(
                    kind="region_open", url=self._api("/api/annotations"), body=body, remember=f"region:{rid}"
                )
            ]
        if r["kind"] == "ended":
            end_ms = _ms(ro["ended_ts"] if ro.get("ended_ts") is not None else r["ts_unix"])
            outcome = ro["state"]
            tags = self._tags(
                ro["agent_id"], ro["environment"], ro["canary_version"], rid, f"outcome:{outcome}"
            )
            region_id = state.get(f"region:{rid}")
            text = f"{title}: {outcome}"
            if region_id is not None:
                body = {"timeEnd": end_ms, "text": text, "tags": tags}
                return [
                    Request(
                        kind="region_close",
                        method="PATCH",
                        url=self._api(f"/api/annotations/{region_id}"),
                        body=body,
                    )
                ]
            body = {
                **self._scope(),
                "time": _ms(ro["started_ts"]),
                "timeEnd": end_ms,
                "text": text,
                "tags": tags,
            }
            return [Request(kind="region_close", url=self._api("/api/annotations"), body=body)]
        action = marker.get("action") or ro["state"]
        body = {
            **self._scope(),
            "time": _ms(r["ts_unix"]),
            "text": f"{ro['agent_id']}/{ro['environment']} {action} (weight {ro['canary_weight']})",
            "tags": self._tags(
                ro["agent_id"], ro["environment"], ro["canary_version"], rid, f"marker:{action}"
            ),
        }
        return [Request(kind="point", url=self._api("/api/annotations"), body=body)]


def _build(settings: GrafanaSettings, ctx: SinkContext) -> GrafanaSink:
    return GrafanaSink(settings, session_factory=ctx.session_factory, clock=ctx.clock)


GRAFANA = SinkType(GrafanaSettings, _build)
