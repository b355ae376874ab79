"""One self-contained HTML page for a ``watcher gate`` run (plotly embedded: works offline).

A gate has one look at a whole data set, so where the rollout report draws evidence over time this page
draws a forest plot: per metric, one line per slice (``all`` on top) with the effect (candidate vs
baseline) and its bounds, against three vertical lines: no effect (grey), the fail margin (``tolerance``,
red dots) and the pass margin (``promote_tolerance``, green dashes). A row fails when its harm-side bound
is beyond the red line and passes when its other bound is inside the green one, so the plot shows at a
glance which rows decided the verdict and how far the rest are from deciding. Below it, every row as a
table with its reason. The page is a function of the decision and its rows only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from watcher.contract import Decision, MetricEvidence, Verdict
from watcher.report.html import _ACTION_COLOUR, _CSS, _VERDICT_COLOUR, _plotly

__all__ = ["render_gate"]

_MARKER = {
    Verdict.FAIL: "#c62828",
    Verdict.PASS: "#2e7d32",
    Verdict.INCONCLUSIVE: "#616161",
    Verdict.NODATA: "#bdbdbd",
}


def render_gate(
    decision: Decision,
    rows: Sequence[MetricEvidence],
    facts: Sequence[tuple[str, str]],
    *,
    title: str,
) -> str:
    """The HTML page of one gate run: ``facts`` (label, value) head it, then the plot and the rows."""
    go, make_subplots = _plotly()
    action = decision.action.value
    colour = _ACTION_COLOUR.get(action, "#616161")  # inconclusive: grey
    head = ["<table>"]
    head += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts]
    head.append("</table>")
    fig, left = _forest(rows, go, make_subplots)
    plot = (
        fig.to_html(full_html=False, include_plotlyjs=True, config={"displaylogo": False})
        if fig is not None
        else "<p>No row has an effect to draw (no metric had data for both versions).</p>"
    )
    if left and fig is not None:
        plot += (
            f"<p class='note'>{left} row(s) not drawn: no effect to place on the axis (too little data, or "
            "a rate of zero on one side of a ratio); the table below has them.</p>"
        )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='mono' style='color:{colour}'><b>{html.escape(decision.reason)}</b></p>"
        + "\n".join(head)
        + f"\n{plot}\n"
        + _table(rows)
        + f"<p>Generated {generated}; decision <span class='mono'>{html.escape(decision.decision_id)}"
        "</span> (watcher.decision/v1).</p></body></html>"
    )


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _drawable(m: MetricEvidence) -> bool:
    """A point on the axis: a finite effect, and above zero on a ratio's log axis (a candidate with no
    events at all has ratio 0: the table shows it)."""
    eff = _finite(m.effect)
    return eff is not None and (m.effect_unit != "ratio" or eff > 0)


def _forest(rows: Sequence[MetricEvidence], go: Any, make_subplots: Any) -> tuple[Any, int]:
    """The figure (None when no row is drawable) and how many rows it leaves to the table."""
    by_metric: dict[str, list[MetricEvidence]] = {}
    for m in rows:
        if _drawable(m):
            by_metric.setdefault(m.metric, []).append(m)
    left = len(rows) - sum(len(ms) for ms in by_metric.values())
    if not by_metric:
        return None, left
    for ms in by_metric.values():
        ms.sort(key=lambda m: (m.slice != "all", m.slice))
    metrics = list(by_metric)
    heights = [len(by_metric[k]) + 1 for k in metrics]
    plot_px = sum(28 * h for h in heights)
    gap_px = 70  # between subplots, for the next one's title
    units = {k: by_metric[k][0].effect_unit for k in metrics}
    fig = make_subplots(
        rows=len(metrics),
        cols=1,
        row_heights=heights,
        vertical_spacing=gap_px / (plot_px + gap_px * len(metrics)),
        subplot_titles=[
            f"{k}{' (critical)' if by_metric[k][0].critical else ''}: "
            + ("candidate / baseline" if units[k] == "ratio" else "candidate − baseline")
            for k in metrics
        ],
    )
    shown: set[Verdict] = set()  # one legend entry per verdict across the subplots
    for i, k in enumerate(metrics, start=1):
        ms = by_metric[k]
        ratio = units[k] == "ratio"
        lo, hi = _x_range(ms, ratio)
        edge = (10**lo, 10**hi) if ratio else (lo, hi)  # an unbounded side runs to the axis' edge
        for verdict in Verdict:
            sel = [m for m in ms if m.verdict is verdict]
            if not sel:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[m.effect for m in sel],
                    y=[m.slice for m in sel],
                    mode="markers",
                    marker={"color": _MARKER[verdict], "size": 9},
                    error_x={
                        "type": "data",
                        "symmetric": False,
                        "array": [_span(m.upper, m.effect, edge) for m in sel],
                        "arrayminus": [_span(m.effect, m.lower, edge) for m in sel],
                        "color": _MARKER[verdict],
                    },
                    name=verdict.value,
                    legendgroup=verdict.value,
                    showlegend=verdict not in shown,
                    hovertext=[m.reason for m in sel],
                    hoverinfo="text",
                ),
                row=i,
                col=1,
            )
            shown.add(verdict)
        first = ms[0]
        fig.add_vline(x=1.0 if ratio else 0.0, line_color="#888", line_width=1, row=i, col=1)
        fig.add_vline(x=first.tolerance, line_color="#c62828", line_dash="dot", row=i, col=1)
        if first.promote_tolerance is not None:
            fig.add_vline(x=first.promote_tolerance, line_color="#2e7d32", line_dash="dash", row=i, col=1)
        fig.update_yaxes(
            autorange="reversed", categoryorder="array", categoryarray=[m.slice for m in ms], row=i, col=1
        )
        fig.update_xaxes(type="log" if ratio else "linear", range=[lo, hi], row=i, col=1)
    fig.update_layout(
        title="Effect per slice with the gate's bounds; red dots: fail margin, green dashes: pass margin",
        height=120 + plot_px + gap_px * len(metrics),
        margin={"t": 90, "b": 30},
    )
    return fig, left


def _span(a: float | None, b: float | None, edge: tuple[float, float]) -> float:
    """a - b with each clipped to the axis (a missing or infinite bound is the edge)."""
    lo, hi = edge
    a = hi if a is None or math.isnan(a) else min(max(a, lo), hi)
    b = lo if b is None or math.isnan(b) else min(max(b, lo), hi)
    return max(a - b, 0.0)


def _x_range(ms: list[MetricEvidence], ratio: bool) -> list[float]:
    """Every effect, finite bound and margin in view, with no effect; log10 units for ratios, whose
    bounds count only within x1/20..x20 (a bound near 0 from a handful of events would squash every
    other row; the bar runs to the axis' edge instead)."""
    vals = [1.0 if ratio else 0.0, ms[0].tolerance]
    if ms[0].promote_tolerance is not None:
        vals.append(ms[0].promote_tolerance)
    for m in ms:  # every row here has a finite effect (``_drawable``)
        vals += [v for v in (_finite(m.effect), _finite(m.lower), _finite(m.upper)) if v is not None]
    if ratio:
        vals = [math.log10(min(max(v, 0.05), 20.0)) for v in vals if v > 0]
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo) or 0.05
    return [lo - pad, hi + pad]


def _table(rows: Sequence[MetricEvidence]) -> str:
    out = [
        "<table><tr><th>metric</th><th>slice</th><th>verdict</th><th>candidate</th><th>baseline</th>"
        "<th>effect</th><th>bounds</th><th>fail / pass margin</th><th>reason</th></tr>"
    ]
    for m in rows:
        bg = _VERDICT_COLOUR.get(m.verdict.value, "#fff")
        cells = [
            m.metric + (" (critical)" if m.critical else ""),
            m.slice,
            m.verdict.value,
            f"{_g(m.treatment.estimate)} (n={m.treatment.n})",
            f"{_g(m.control.estimate)} (n={m.control.n})",
            _g(m.effect),
            f"{_g(m.lower)} … {_g(m.upper)}",
            f"{_g(m.tolerance)} / {_g(m.promote_tolerance)}",
        ]
        out.append(
            f"<tr style='background:{bg}'>"
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            + f"<td class='mono'>{html.escape(m.reason)}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"
