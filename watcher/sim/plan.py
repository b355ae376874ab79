"""What a scenario fixes once (``Plan``: segment tables and their effects, arm profiles, the JSON
fragments every line is built from) and how drawn columns become ``watcher.turn/v1`` lines
(``format_turns``) and deployment markers (``marker_lines``). ``watcher.sim.traffic`` draws the
columns; keeping the encoding here lets one read the model without the string tables around it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

from watcher.sim.scenario import Scenario

__all__ = ["Plan", "format_turns", "marker_lines"]

# Segment effects, applied when the key/value exists: cancellations are hard and want a human.
_QUALITY_OFFSET = {
    ("intent", "cancellation"): -0.06,
    ("intent", "tech_support"): -0.03,
    ("intent", "sales"): 0.02,
    ("language", "de"): -0.01,
    ("language", "fr"): -0.015,
    ("language", "es"): -0.02,
    ("channel", "voice"): -0.02,
}
_ESCALATION_FACTOR = {("intent", "cancellation"): 2.5, ("intent", "billing"): 1.2, ("channel", "voice"): 1.3}
_LATENCY_MEDIAN_MS = {"voice": 600.0, "chat": 350.0}
_LATENCY_DEFAULT_MS = 450.0
_THINK_MEDIAN_S = {"voice": 4.0, "chat": 9.0}


class Plan:
    """Constants derived once per scenario: segment tables, JSON fragments, arm profiles."""

    def __init__(self, s: Scenario) -> None:
        self.keys = list(s.segments)
        self.values = [list(s.segments[k]) for k in self.keys]
        self.sizes = [len(v) for v in self.values]
        after = s.mix_after or {}
        self.cum = [self._cum(s.segments[k], v) for k, v in zip(self.keys, self.values)]
        self.cum_after = [
            self._cum(after[k], v) if k in after else c for k, v, c in zip(self.keys, self.values, self.cum)
        ]
        n_combo = math.prod(self.sizes)
        codes = np.arange(n_combo)
        per_key = []  # code of each key's value for every combination (mixed radix)
        for size in reversed(self.sizes):
            per_key.append(codes % size)
            codes = codes // size
        self.combo_codes = list(reversed(per_key))
        enc = msgspec.json.encode
        self.seg_json = []
        self.q_offset = np.zeros(n_combo)
        self.esc_factor = np.ones(n_combo)
        self.lat_median = np.full(n_combo, _LATENCY_DEFAULT_MS)
        self.think = np.full(n_combo, 6.0)
        for c in range(n_combo):
            pairs = {k: self.values[i][self.combo_codes[i][c]] for i, k in enumerate(self.keys)}
            self.seg_json.append(enc(pairs).decode())
            for pair in pairs.items():
                self.q_offset[c] += _QUALITY_OFFSET.get(pair, 0.0)
                self.esc_factor[c] *= _ESCALATION_FACTOR.get(pair, 1.0)
            channel = pairs.get("channel", "")
            self.lat_median[c] = _LATENCY_MEDIAN_MS.get(channel, _LATENCY_DEFAULT_MS)
            self.think[c] = _THINK_MEDIAN_S.get(channel, 6.0)
        profiles = (s.baseline, s.canary or s.baseline)
        self.profile = {f: np.array([getattr(p, f) for p in profiles]) for f in vars(s.baseline)}
        version = [enc(s.baseline_version).decode(), enc(s.canary_version).decode()]
        arm = ['"baseline"', '"canary"'] if s.explicit_arms else ["null", "null"]
        extra = ["", ""]
        if s.strategy == "shadow":
            arm = ['"live"', '"shadow"'] if s.explicit_arms else ["null", "null"]
        elif s.strategy == "blue_green":
            arm = ["null", "null"]  # explicit canary arms before the switch marker would auto-start a canary
        elif s.strategy == "flag":
            version = [version[0], version[0]]
            arm = ["null", "null"]
            name = enc(s.flag_name).decode()
            extra = [f'"flags":{{{name}:{enc(v).decode()}}},' for v in s.flag_variants]
        if s.arm_label is not None:
            arm = [enc(s.arm_label).decode() if s.arm_label else "null"] * 2
        self.arm_segment = [
            f'"version":{version[a]},"arm":{arm[a]},"segment":{seg},{extra[a]}'
            for a in (0, 1)
            for seg in self.seg_json
        ]
        self.head = '{"schema":"watcher.turn/v1","event_id":"'
        self.agent_env = (
            f'"agent_id":{enc(s.agent_id).decode()},"environment":{enc(s.environment).decode()},'
            '"conversation_id":"'
        )
        self.prefix = (
            s.id_prefix
            if s.id_prefix is not None
            else "c" + hashlib.blake2b(str(s.seed).encode(), digest_size=4).hexdigest() + "-"
        )

    @staticmethod
    def _cum(dist: Mapping[str, float], values: list[str]) -> np.ndarray:
        p = np.array([dist.get(v, 0.0) for v in values], dtype=float)  # in the order of the codes
        return np.cumsum(p / p.sum())

    def segment_mask(self, combo: np.ndarray, segment: Mapping[str, str] | None) -> np.ndarray:
        mask = np.ones(combo.shape, dtype=bool)
        for key, value in (segment or {}).items():
            i = self.keys.index(key)
            mask &= self.combo_codes[i][combo] == self.values[i].index(value)
        return mask


_QUALITY_TEXT = [f"{i / 1000}" for i in range(1001)] + ["null"]  # quality has 3 decimals: 1002 strings
_MS_TEXT = [f".{i:03d}Z" for i in range(1000)]
_SUFFIX_TEXT = ["", "-shadow"]  # event id suffix of shadow turns (live turns keep "{conversation}-{turn}")
_FLAGS_TEXT = [
    f'"escalated":{e},"error":{r},"compliance_violation":{c},'
    for e in ("false", "true")
    for r in ("false", "true")
    for c in ("false", "true")
]


def format_turns(plan: Plan, cols: dict[str, np.ndarray], sec_cache: dict[int, str]) -> list[str]:
    # Per event Python work is the cost: floats are written from integers (tenths of ms,
    # micro-dollars, a table for quality; float repr costs ~350 ns a number) and every field with
    # few values (arm x segment, the three flags, milliseconds) is one lookup in a table of fragments.
    ms = cols["ms"]
    secs = (ms // 1000).tolist()
    for sec in set(secs) - sec_cache.keys():
        sec_cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    lat10 = np.rint(cols["lat"] * 10).astype(np.int64)
    micro = np.rint(cols["cost"] * 1e6).astype(np.int64)
    q = cols["q"]
    q_code = np.where(np.isnan(q), 1001, np.rint(np.nan_to_num(q) * 1000)).astype(np.int64)
    arm_seg = cols["arm"].astype(np.int64) * len(plan.seg_json) + cols["seg"]
    flags = cols["esc"].astype(np.int64) * 4 + cols["err"].astype(np.int64) * 2 + cols["comp"]
    head, ae, pre, vas = plan.head, plan.agent_env, plan.prefix, plan.arm_segment
    qt, mt, ft, sx = _QUALITY_TEXT, _MS_TEXT, _FLAGS_TEXT, _SUFFIX_TEXT
    return [
        f'{head}{pre}{c}-{k}{sx[sh]}","ts":"{sec_cache[sc]}{mt[fr]}",{ae}{pre}{c}","turn":{k},{vas[v]}'
        f'"latency_ms":{li}.{lf},"quality":{qt[qc]},{ft[fl]}"tokens_in":{ti},"tokens_out":{to},'
        f'"cost_usd":{ci}.{cf:06d}}}'
        for sc, fr, c, k, sh, v, li, lf, qc, fl, ti, to, ci, cf in zip(
            secs,
            (ms % 1000).tolist(),
            cols["conv"].tolist(),
            cols["k"].tolist(),
            cols["sh"].tolist(),
            arm_seg.tolist(),
            (lat10 // 10).tolist(),
            (lat10 % 10).tolist(),
            q_code.tolist(),
            flags.tolist(),
            cols["tin"].tolist(),
            cols["tout"].tolist(),
            (micro // 1_000_000).tolist(),
            (micro % 1_000_000).tolist(),
        )
    ]


def marker_lines(s: Scenario, plan: Plan) -> list[tuple[int, str]]:
    if not s.emit_markers:
        return []
    base: dict[str, Any] = {
        "schema": "watcher.deployment/v1",
        "agent_id": s.agent_id,
        "environment": s.environment,
        "strategy": s.strategy,
        "baseline_version": s.baseline_version,
        "canary_version": s.canary_version,
        "actor": "watcher-simulate",
    }
    start, weight = 0.0, s.canary_weight
    if s.strategy == "flag":
        base["canary_version"] = None
        base["flag"] = {"name": s.flag_name, "control": s.flag_variants[0], "treatment": s.flag_variants[1]}
    elif s.strategy == "shadow":  # the share of conversations mirrored (1: all)
        weight = s.shadow_share
    elif s.strategy == "blue_green":
        start, weight = s.switch_s, 1.0
    steps = [(start, "started", weight)] + [
        (at, "weight_changed", w)
        for at, w in sorted(s.weight_steps)
        if at < s.duration_s and s.strategy in ("canary", "flag")
    ]
    out = []
    for i, (at, action, weight) in enumerate(steps):
        ms = math.floor(s.start_ts * 1000 + at * 1000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        d = {**base, "event_id": f"{plan.prefix}dep-{i}", "ts": ts, "action": action, "canary_weight": weight}
        out.append((ms, msgspec.json.encode(d).decode()))
    return out
