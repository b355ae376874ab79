"""One self-contained HTML page from rollouts' evidence histories (plotly, embedded: works offline).

Per rollout: a header (strategy, versions, weight, state, why it is not judged when it is not), the
gate verdicts its treatment version got before it (``watcher gate --record``), the decisions with
their reasons, then three figures on one event-time axis with the deployment markers
(dashed) and watcher's decisions (solid, coloured by action):

* traffic: conversations per arm since the rollout started;
* effects: for each metric overall and each slice that failed or came closest to failing, the effect
  (treatment vs control) with its anytime-valid interval, the tolerance and the no-effect line;
* evidence: each of those rows' e-value divided by its threshold (log scale): a row fails at 1.

and the last look's verdict of every metric x slice as a table. The page is a function of
``RolloutHistory`` values only, so any command that holds a rollout's history can draw it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from watcher.engine import EvidencePoint, RolloutHistory
from watcher.errors import ReportUnavailable

__all__ = ["render", "require_plotting"]

_ACTION_COLOUR = {"rollback": "#c62828", "pause": "#ef6c00", "promote": "#2e7d32", "resume": "#1565c0"}
_VERDICT_COLOUR = {"fail": "#ef9a9a", "pass": "#a5d6a7", "inconclusive": "#eeeeee"}
_MAX_SLICE_ROWS = 4  # slices drawn per rollout besides every metric's overall row
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:36px;border-top:1px solid #ccc;padding-top:18px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}
.note{background:#fff3e0;border-left:4px solid #ef6c00;padding:6px 10px}
.mono{font-family:ui-monospace,monospace}
"""


def require_plotting() -> None:
    """Raise ``ReportUnavailable`` now, before a long replay, when the plotting extra is missing."""
    _plotly()


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go  # lazy: an optional extra, heavy to import
        from plotly.subplots import make_subplots
    except ImportError as exc:
        raise ReportUnavailable("report", "plotly") from exc
    return go, make_subplots


def _t(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def render(histories: Sequence[RolloutHistory], *, title: str = "watcher report") -> str:
    """The HTML page of these rollouts (plotly.js embedded once; no network needed to view it)."""
    go, make_subplots = _plotly()
    parts: list[str] = []
    first = True
    for h in histories:
        figs = _figures(h, go, make_subplots)
        body = [_header(h)]
        for fig in figs:
            body.append(fig.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
            first = False
        body.append(_matrix(h.points[-1] if h.points else None))
        parts.append("\n".join(body))
    if not histories:
        parts.append("<p>No rollout in this stream.</p>")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{len(histories)} rollout(s); generated {generated}. Times are event times (UTC).</p>"
        + "\n".join(parts)
        + "</body></html>"
    )


def _header(h: RolloutHistory) -> str:
    r = h.rollout
    rows = [
        ("rollout", r.get("rollout_id")),
        ("agent / environment", f"{r.get('agent_id')} / {r.get('environment')}"),
        ("strategy", r.get("strategy")),
        ("control → treatment", f"{r.get('baseline_version')} → {r.get('canary_version')}"),
        ("treatment weight", r.get("canary_weight")),
        ("state", r.get("state")),
        ("started", _t(r["started_ts"]).isoformat() if r.get("started_ts") else None),
    ]
    if r.get("flag"):
        rows.append(("flag", r["flag"]))
    heading = f"{r.get('agent_id')} — {r.get('rollout_id')}"
    out = [f"<h2>{html.escape(heading)}</h2>", "<table>"]
    out += [f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows]
    out.append("</table>")
    if h.note:
        out.append(f"<p class='note'>{html.escape(h.note)}</p>")
    out.append(_gates(h.gates, str(r.get("canary_version"))))
    if h.decisions:
        out.append("<table><tr><th>event time</th><th>action</th><th>reason</th></tr>")
        for d in h.decisions:
            colour = _ACTION_COLOUR.get(d["action"], "#222")
            out.append(
                f"<tr><td>{html.escape(d.get('ts', ''))}</td><td style='color:{colour}'><b>"
                f"{html.escape(d['action'])}</b></td><td class='mono'>{html.escape(d['reason'])}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>No decision.</p>")
    return "\n".join(out)


def _gates(gates: list[dict[str, Any]], version: str) -> str:
    """What the treatment version passed (or not) before this rollout: ``watcher gate --record``."""
    if not gates:
        return f"<p>No gate verdict recorded for {html.escape(version)} (watcher gate --record).</p>"
    out = [
        f"<p>Gate verdicts recorded for {html.escape(version)} before this rollout:</p><table>"
        "<tr><th>gated at</th><th>environment</th><th>verdict</th><th>against</th><th>decision</th></tr>"
    ]
    for g in gates:
        verdict = str(g.get("verdict"))
        ts = g.get("ts")
        when = _t(ts).isoformat() if isinstance(ts, int | float) else "?"
        cells = [
            when,
            str(g.get("environment")),
            verdict,
            str(g.get("baseline_version")),
            str(g.get("decision_id")),
        ]
        colour = _VERDICT_COLOUR.get(verdict, "#fff")
        out.append(
            f"<tr style='background:{colour}'>"
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            + "</tr>"
        )
    out.append("</table>")
    return "".join(out)


def _chosen_rows(points: list[EvidencePoint]) -> list[tuple[str, str]]:
    """Every metric's overall row, then the slices that failed or came closest (by e / threshold)."""
    overall: dict[str, None] = {}
    closest: dict[tuple[str, str], float] = {}
    for p in points:
        for row in p.rows:
            if row.slice == "all":
                overall.setdefault(row.metric)
                continue
            strength = row.statistic / row.threshold if row.threshold > 0 else 0.0
            key = (row.metric, row.slice)
            closest[key] = max(closest.get(key, 0.0), strength)
    slices = sorted(closest, key=lambda k: -closest[k])[:_MAX_SLICE_ROWS]
    return [(m, "all") for m in overall] + slices


def _series(points: list[EvidencePoint], key: tuple[str, str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"t": [], "effect": [], "lower": [], "upper": [], "strength": []}
    tol = unit = None
    for p in points:
        for row in p.rows:
            if (row.metric, row.slice) == key:
                out["t"].append(_t(p.ts))
                out["effect"].append(row.effect)
                out["lower"].append(row.lower)
                out["upper"].append(row.upper)
                out["strength"].append(row.statistic / row.threshold if row.threshold > 0 else None)
                tol, unit = row.tolerance, row.unit
                break
    out["tolerance"], out["unit"] = [tol], [unit]
    return out


def _events(h: RolloutHistory) -> list[tuple[datetime, str, str, str]]:
    """(time, label, colour, dash) of the markers and decisions."""
    ev = [
        (_t(m["ts"]), str(m.get("action")), "#555", "dash")
        for m in h.rollout.get("markers", ())
        if isinstance(m.get("ts"), int | float)
    ]
    ev += [
        (_t(d["ts_unix"]), d["action"], _ACTION_COLOUR.get(d["action"], "#222"), "solid")
        for d in h.decisions
        if "ts_unix" in d
    ]
    return ev


def _mark(fig: Any, events: list[tuple[datetime, str, str, str]], rows: int) -> None:
    for at, label, colour, dash in events:
        for r in range(1, rows + 1):
            fig.add_vline(x=at, line_color=colour, line_dash=dash, line_width=1, row=r, col=1)
        fig.add_annotation(
            x=at,
            y=1.0,
            yref="paper",
            text=label,
            showarrow=False,
            font={"color": colour, "size": 11},
            xanchor="left",
            yanchor="bottom",
        )


def _figures(h: RolloutHistory, go: Any, make_subplots: Any) -> list[Any]:
    pts = h.points
    events = _events(h)
    traffic = go.Figure()
    t = [_t(p.ts) for p in pts]
    for name, y in (
        ("control conversations", [p.conversations_control for p in pts]),
        ("treatment conversations", [p.conversations_treatment for p in pts]),
    ):
        traffic.add_trace(go.Scatter(x=t, y=y, name=name))
    traffic.update_layout(title="Traffic per arm", height=280, margin={"t": 60, "b": 30})
    traffic.update_yaxes(title_text="conversations")
    _mark(traffic, events, 0)
    keys = _chosen_rows(pts)
    if not keys:
        return [traffic]
    names = [f"{m} in {s}" for m, s in keys]
    effects = make_subplots(
        rows=len(keys), cols=1, shared_xaxes=True, subplot_titles=names, vertical_spacing=0.3 / len(keys)
    )
    evidence = go.Figure()
    for i, key in enumerate(keys, start=1):
        s = _series(pts, key)
        ratio = s["unit"][0] == "ratio"
        band = go.Scatter(x=s["t"], y=s["upper"], line={"width": 0}, showlegend=False, hoverinfo="skip")
        effects.add_trace(band, row=i, col=1)
        effects.add_trace(
            go.Scatter(
                x=s["t"],
                y=s["lower"],
                fill="tonexty",
                fillcolor="rgba(21,101,192,0.18)",
                line={"width": 0},
                name="anytime-valid interval",
                showlegend=i == 1,
            ),
            row=i,
            col=1,
        )
        effects.add_trace(
            go.Scatter(x=s["t"], y=s["effect"], line={"color": "#1565c0"}, name="effect", showlegend=i == 1),
            row=i,
            col=1,
        )
        effects.add_hline(y=1.0 if ratio else 0.0, line_color="#888", line_width=1, row=i, col=1)
        if s["tolerance"][0] is not None:
            effects.add_hline(y=s["tolerance"][0], line_color="#c62828", line_dash="dot", row=i, col=1)
        effects.update_yaxes(
            title_text="ratio (log)" if ratio else "difference",
            type="log" if ratio else "linear",
            range=_y_range(s, ratio),
            row=i,
            col=1,
        )
        evidence.add_trace(go.Scatter(x=s["t"], y=s["strength"], name=names[i - 1], mode="lines"))
    effects.update_layout(
        title="Effect (treatment vs control) with its anytime-valid interval; red dots: the tolerance",
        height=190 * len(keys) + 80,
        margin={"t": 80, "b": 30},
    )
    _mark(effects, events, len(keys))
    evidence.add_hline(y=1.0, line_color="#c62828", line_dash="dot")
    evidence.update_layout(
        title="Evidence: e-value / threshold (a row fails at 1)", height=360, margin={"t": 60, "b": 30}
    )
    evidence.update_yaxes(type="log", title_text="e / threshold")
    _mark(evidence, events, 0)
    return [traffic, effects, evidence]


def _y_range(s: dict[str, list[Any]], ratio: bool) -> list[float] | None:
    """The effect axis: the effect, the tolerance, no effect and the interval of the later half of
    the rollout (the first looks' intervals are wide and would flatten everything else)."""
    half = len(s["t"]) // 2
    vals = [v for v in s["effect"] + s["lower"][half:] + s["upper"][half:] + s["tolerance"] if v is not None]
    vals = [v for v in vals if math.isfinite(v) and (v > 0 or not ratio)] + [1.0 if ratio else 0.0]
    if ratio:
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
    else:
        lo, hi = min(vals), max(vals)
    pad = 0.1 * (hi - lo) or 0.05
    return [lo - pad, hi + pad]


def _matrix(p: EvidencePoint | None) -> str:
    if p is None:
        return "<p>No evidence yet.</p>"
    metrics = list(dict.fromkeys(r.metric for r in p.rows))
    slices = list(dict.fromkeys(r.slice for r in p.rows))
    cell = {(r.metric, r.slice): r for r in p.rows}
    out = [f"<p>Verdicts at the last look ({_t(p.ts).isoformat()}):</p><table><tr><th>metric</th>"]
    out += [f"<th>{html.escape(s)}</th>" for s in slices]
    out.append("</tr>")
    for m in metrics:
        out.append(f"<tr><th>{html.escape(m)}</th>")
        for s in slices:
            r = cell.get((m, s))
            if r is None:
                out.append("<td></td>")
                continue
            eff = "" if r.effect is None or not math.isfinite(r.effect) else f"{r.effect:.3g}"
            colour = _VERDICT_COLOUR.get(r.verdict.value, "#fff")
            out.append(f"<td style='background:{colour}'>{r.verdict.value} {eff}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)
