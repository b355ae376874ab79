"""Slack incoming webhook: one Block Kit message per decision (never one per batch).

A message says what happened (action, agent / environment, versions), the metric and segment that
triggered it, the effect with its anytime-valid interval, the sample size per arm, and links (the
rollout in watcher's API, a dashboard). Slack's limits are enforced here, not hoped for: at most 50
blocks, a header of at most 150 plain-text characters, section text at most 3000, at most 10 fields of
at most 2000; evidence lists are cut to ``max_evidence_rows`` (failing rows first) so a message stays
far below Slack's ~13k character ceiling. ``text`` is the notification fallback.

Statuses: 200 ok; 400 ``invalid_payload``, 403, 404, 410 permanent; 429 with ``Retry-After``.
"""

from __future__ import annotations

from typing import Annotated, Any

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

__all__ = ["SLACK", "SlackSettings", "SlackSink", "render_decision", "render_drift", "render_marker"]

MAX_BLOCKS = 50
HEADER_MAX = 150
SECTION_MAX = 3000
FIELDS_MAX = 10
FIELD_MAX = 2000
ROW_MAX = 280  # one evidence line
TEXT_MAX = 3000

_EMOJI = {
    "rollback": ":rotating_light:",
    "pause": ":double_vertical_bar:",
    "promote": ":white_check_mark:",
    "resume": ":arrow_forward:",
}
_VERDICT_ORDER = {"fail": 0, "inconclusive": 1, "pass": 2, "nodata": 3}
_VERDICT_ICON = {
    "fail": ":x:",
    "inconclusive": ":grey_question:",
    "pass": ":heavy_check_mark:",
    "nodata": ":white_circle:",
}


def esc(text: str) -> str:
    """Slack mrkdwn escaping: only &, < and > are control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def num(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _header(text: str) -> dict[str, Any]:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": truncate(text, HEADER_MAX), "emoji": True},
    }


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_MAX)}}


def _fields(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": truncate(f"*{esc(k)}*\n{v}", FIELD_MAX)} for k, v in pairs[:FIELDS_MAX]
        ],
    }


def _links_context(link_list: list[tuple[str, str]], extra: str) -> dict[str, Any]:
    parts = [f"<{url}|{esc(text)}>" for text, url in link_list]
    parts.append(extra)
    return {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": truncate(" · ".join(parts), SECTION_MAX)}],
    }


def _row(e: dict[str, Any]) -> str:
    icon = _VERDICT_ICON.get(e.get("verdict", ""), "")
    return truncate(
        f"{icon} *{esc(e['metric'])}* in `{esc(e['slice'])}`: {esc(e.get('reason') or '')}", ROW_MAX
    )


def evidence_text(evidence: list[dict[str, Any]], max_rows: int) -> str:
    """Failing rows first, then inconclusive, pass, nodata; cut to ``max_rows`` and to one section."""
    ordered = sorted(evidence, key=lambda e: _VERDICT_ORDER.get(e.get("verdict", ""), 9))
    shown: list[str] = []
    budget = SECTION_MAX - 200  # room for the title and the "more rows" line
    for e in ordered[:max_rows]:
        line = _row(e)
        if sum(len(s) + 1 for s in shown) + len(line) > budget:
            break
        shown.append(line)
    failing = sum(1 for e in evidence if e.get("verdict") == "fail")
    title = f"*Evidence* ({failing} failing of {len(evidence)} rows)"
    more = len(evidence) - len(shown)
    tail = [f"_… and {more} more rows in the decision record_"] if more > 0 else []
    return "\n".join([title, *shown, *tail])


def examples_text(examples: list[dict[str, Any]], row: dict[str, Any] | None) -> str:
    """The trigger's worst canary conversations, each a link to its traces when there is one."""
    metric = esc(row["metric"]) if row else "the metric"
    lines = [f"*Worst canary conversations* on {metric}:"]
    for x in examples:
        cid = esc(str(x.get("conversation_id")))
        name = f"<{x['url']}|`{cid}`>" if x.get("url") else f"`{cid}`"
        trace = f", trace `{esc(str(x['trace_id']))}`" if x.get("trace_id") else ""
        lines.append(truncate(f"• {name} ({num(x.get('value'))}{trace})", ROW_MAX))
    return truncate("\n".join(lines), SECTION_MAX)


def _evalue(row: dict[str, Any]) -> str:
    # a null statistic is an e-value that overflowed (JSON has no infinity)
    stat = row.get("statistic")
    return f"{'∞' if stat is None else num(stat)} (threshold {num(row.get('threshold'))})"


def _trigger_row(record: dict[str, Any]) -> dict[str, Any] | None:
    trigger = record.get("trigger") or {}
    evidence = record.get("evidence") or []
    for e in evidence:
        if e.get("metric") == trigger.get("metric") and e.get("slice") == trigger.get("slice"):
            return dict(e)
    failing = [e for e in evidence if e.get("verdict") == "fail"]
    return failing[0] if failing else None


def render_decision(
    record: dict[str, Any], link_list: list[tuple[str, str]], max_rows: int
) -> dict[str, Any]:
    ro = record["rollout"]
    action = record["action"]
    target = f"{ro['agent_id']}/{ro['environment']}"
    versions = f"canary `{esc(str(ro['canary_version']))}` vs baseline `{esc(str(ro['baseline_version']))}`"
    weight = ro.get("canary_weight")
    share = f", {weight:.0%} of traffic" if isinstance(weight, (int, float)) else ""
    blocks: list[dict[str, Any]] = [
        _header(
            f"{_EMOJI.get(action, '')} {action.capitalize()}: {target} {ro['canary_version'] or ''}".strip()
        ),
        _section(
            f"*{action.capitalize()}* of *{esc(target)}*: {versions} ({esc(ro['strategy'])}{share}).\n"
            f">{esc(record['reason'])}"
        ),
    ]
    row = _trigger_row(record)
    pairs: list[tuple[str, str]] = [("Cause", esc(record["cause"]))]
    if row is not None:
        unit = "" if row.get("effect_unit") == "difference" else " (ratio)"
        pairs += [
            ("Metric", esc(row["metric"])),
            ("Segment", f"`{esc(row['slice'])}`"),
            (
                "Effect",
                f"{num(row.get('effect'))}{unit}, interval {num(row.get('lower'))} .. "
                f"{num(row.get('upper'))}",
            ),
            ("Tolerance", num(row.get("tolerance"))),
            ("Canary", f"n={num(row['treatment']['n'])}, estimate {num(row['treatment']['estimate'])}"),
            ("Baseline", f"n={num(row['control']['n'])}, estimate {num(row['control']['estimate'])}"),
            ("E-value", _evalue(row)),
        ]
    pairs.append(("Decision", f"#{record.get('sequence')} by {esc(str(record.get('actor')))}"))
    blocks.append(_fields(pairs))
    sr = record.get("sample_ratio")
    if sr and sr.get("mismatch"):
        blocks.append(_section(f"*Sample ratio*: {esc(sr.get('reason') or '')}"))
    examples = record.get("examples") or []
    if examples:
        blocks.append(_section(examples_text(examples, row)))
    evidence = record.get("evidence") or []
    if evidence:
        blocks.append({"type": "divider"})
        blocks.append(_section(evidence_text(evidence, max_rows)))
    blocks.append(_links_context(link_list, f"`{record['decision_id']}` · {record['ts']}"))
    fallback = f"{action.capitalize()} {target} {ro['canary_version'] or ''}: {record['reason']}"
    return {"text": truncate(fallback, TEXT_MAX), "blocks": blocks[:MAX_BLOCKS]}


def render_marker(record: dict[str, Any], link_list: list[tuple[str, str]]) -> dict[str, Any]:
    ro = record["rollout"]
    marker = record.get("marker") or {}
    action = marker.get("action") or record["kind"]
    target = f"{ro['agent_id']}/{ro['environment']}"
    title = f"Rollout {action}: {target} {ro['canary_version'] or ''}".strip()
    by = marker.get("actor") or ("watcher" if not marker else "unknown")
    text = (
        f"*{esc(title)}*: canary `{esc(str(ro['canary_version']))}` vs baseline "
        f"`{esc(str(ro['baseline_version']))}` ({esc(ro['strategy'])}), state *{esc(ro['state'])}*, "
        f"by {esc(by)}."
    )
    blocks = [
        _header(title),
        _section(text),
        _links_context(link_list, f"`{ro['rollout_id']}` · {record['ts']}"),
    ]
    return {"text": truncate(title, TEXT_MAX), "blocks": blocks}


def render_drift(record: dict[str, Any], link_list: list[tuple[str, str]]) -> dict[str, Any]:
    title = (
        f"Drift: {record['agent_id']}/{record['environment']} {record['version']} "
        f"{record['metric']} {record['direction']}"
    )
    blocks = [
        _header(title),
        _section(f">{esc(record['reason'])}"),
        _fields(
            [
                ("Before", num(record.get("before"))),
                ("After", num(record.get("after"))),
                ("Since", esc(str(record.get("change_ts")))),
                ("Worse", "yes" if record.get("worse") else "no"),
            ]
        ),
        _links_context(link_list, f"`{record['signal_id']}` · {record['ts']}"),
    ]
    return {"text": truncate(f"{title}: {record['reason']}", TEXT_MAX), "blocks": blocks}


class SlackSettings(SinkSettings, tag="slack", frozen=True, kw_only=True):
    """``type: slack``: an incoming webhook. Its URL holds the credential, so it is masked too."""

    url: Annotated[HttpUrl, SECRET]
    api_url: HttpUrl | None = None  # watcher's own external URL, for links in messages
    dashboard_url: HttpUrl | None = None  # may hold {agent_id}, {environment}, {rollout_id}
    max_evidence_rows: Annotated[int, Meta(ge=1)] = 8  # evidence rows shown (failing rows first)


class SlackSink(HttpSink[SlackSettings]):
    def render(self, item: Item, state: SinkState = NULL_STATE) -> list[Request]:
        link_list = links(self.settings.api_url, self.settings.dashboard_url, item.record)
        if item.kind is ItemKind.DECISION:
            body = render_decision(item.record, link_list, self.settings.max_evidence_rows)
        elif item.kind is ItemKind.MARKER:
            body = render_marker(item.record, link_list)
        else:
            body = render_drift(item.record, link_list)
        return [Request(kind="message", url=self.settings.url, body=body)]


def _build(settings: SlackSettings, ctx: SinkContext) -> SlackSink:
    return SlackSink(settings, session_factory=ctx.session_factory, clock=ctx.clock)


SLACK = SinkType(SlackSettings, _build)
