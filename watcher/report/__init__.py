"""The HTML report (layer: between the HTTP side and the outbox). ``render(histories)`` turns rollouts'
evidence histories (``watcher.engine.RolloutHistory``) into one self-contained HTML page that works
offline: per rollout its decisions, traffic per arm, each metric x slice's effect with its anytime-valid
interval over time, and the e-value against its threshold, with markers and decisions on the time axis.
Plots need the optional extra ``rollout-watcher[report]`` (plotly); without it ``render`` raises
``watcher.errors.ReportUnavailable`` naming the extra. ``watcher replay FILE --report`` and
``GET /v1/rollouts/{id}/report`` use it; so can any command holding a rollout's history.
``render_gate(decision, rows, facts, title=...)``: the page of one ``watcher gate`` run (one look at a
whole data set, so a forest plot of every metric x slice against its fail and pass margins).
"""

from __future__ import annotations

from watcher.report.gate import render_gate
from watcher.report.html import render, require_plotting

__all__ = [
    "render",
    "render_gate",
    "require_plotting",
]
