"""The gate's sample: a whole data set of turns reduced to per-slice sums, as the live judges count.

The unit is the conversation, as in every judge: a rate metric counts the conversations that had the
event (any turn), a mean metric keeps the six cluster sums (``MEAN_FIELDS``) of each conversation's
values, the latency tail counts conversations with a turn slower than the baseline's NN-th
percentile, and slices are the policy's segment slices with the live layout (``state.SliceMap``:
slot 0 "all", then per key its values and ``__other__``), a conversation's segment being that of its
first turn.

Two designs:

* **unpaired**: the candidate's conversations against the baseline's (staging traffic against
  production telemetry of the baseline version, or two independent runs): per slice and arm;
* **paired**: both versions answered the same conversations (a replay of recorded conversations or
  an offline-evaluation run, paired by conversation / test-case id, as the shadow judge pairs them):
  rates become discordance counts (only the candidate had the event / only the baseline did), means
  the differences of turns paired by ``(conversation_id, turn)``. Conversations seen on one side
  only are counted and left out.

Everything is a few numpy passes over the turns; Python runs per distinct conversation only to
number the ids and per distinct segment to slice them.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from watcher.contract import TurnColumns, metric_def
from watcher.judges.policy import MetricPolicy, Policy
from watcher.state import SliceMap

__all__ = ["GateSample", "build_sample"]

CONTROL, TREATMENT = 0, 1


@dataclass
class GateSample:
    """Per-slice sums of one gate run (every array's first axis is the slice)."""

    paired: bool
    slice_names: dict[int, str]
    n_slices: int  # slots of the layout, judged or not (the alpha split counts them all)
    units: np.ndarray  # (slice, arm): conversations (paired: pairs in both columns)
    # rate metric -> (slice, arm) conversations with the event; paired: (slice, 2) discordant counts
    # [control only, treatment only] in ``discordant`` and the per-arm counts here
    events: dict[str, np.ndarray] = field(default_factory=dict)
    discordant: dict[str, np.ndarray] = field(default_factory=dict)
    # mean metric -> (slice, arm, MEAN_FIELDS); paired: ``diffs`` (slice, MEAN_FIELDS) of the paired
    # differences, and here the per-arm sums of the paired values
    means: dict[str, np.ndarray] = field(default_factory=dict)
    diffs: dict[str, np.ndarray] = field(default_factory=dict)
    tail_q: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # turns, conversations, paired, unpaired ...


def _codes(ids: list[Any]) -> tuple[np.ndarray, int]:
    """Dense codes of ``ids`` in order of first appearance (one dict lookup per id, in C)."""
    table: defaultdict[Any, int] = defaultdict(itertools.count().__next__)
    code = np.fromiter(map(table.__getitem__, ids), np.int64, len(ids))
    return code, len(table)


def _value(cols: TurnColumns, mp: MetricPolicy) -> np.ndarray:
    """A mean metric's per-turn value as the live judge tests it (``log_scale``: log latency)."""
    d = metric_def(mp.name)
    x: np.ndarray = getattr(cols, d.column)
    return np.log(np.maximum(x, 1e-3)) if d.log_scale else x


def _cluster_rows(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The MEAN_FIELDS sums (in ``stats.mean_deltas``' order) of conversations with sum ``s`` over
    ``n`` values."""
    return np.stack([s, n, s * s, s * n, n * n, (n > 0).astype(float)], axis=-1)


def build_sample(
    cols: TurnColumns, treatment: np.ndarray, turn: np.ndarray, policy: Policy, *, paired: bool
) -> GateSample:
    """Reduce the turns (``treatment[i]``: turn i is the candidate's; ``turn``: turn numbers)."""
    metrics = policy.enabled_metrics()
    side = treatment.astype(np.int64)
    code, n_conv = _codes(cols.conversation_id)
    unit = code * 2 + side  # a conversation on one side
    n_units = 2 * n_conv
    turns_per = np.bincount(unit, minlength=n_units).reshape(n_conv, 2)
    present = turns_per > 0
    keep = np.asarray(present.all(axis=1) if paired else present.any(axis=1), bool)
    # The segment of a conversation is that of its first turn (lowest number, then first seen).
    order = np.lexsort((np.arange(len(code)), turn, code))
    starts = np.ones(len(order), bool)
    starts[1:] = code[order][1:] != code[order][:-1]
    first = order[starts]
    seg = cols.segment
    # segment keys and values are adopted in event-time order (ties by id), so the slices do not
    # depend on the order of the input (OTLP requests group turns otherwise than JSON lines)
    ids = cols.conversation_id
    seg_order = np.lexsort((np.array([ids[i] for i in first.tolist()]), cols.ts[first]))
    seg_cfg = policy.segments
    smap = SliceMap(seg_cfg.keys, seg_cfg.max_keys, seg_cfg.max_values_per_key, seg_cfg.enabled)
    slices = np.full((n_conv, max(smap.max_keys, 0) + 1), -1, np.int64)
    slices[:, 0] = 0
    if smap.max_keys:
        seg_codes, _ = _codes([_seg_key(seg[i]) for i in first[seg_order].tolist()])
        distinct: dict[int, dict[str, str]] = {}
        for c, i in zip(seg_codes.tolist(), first[seg_order].tolist()):
            distinct.setdefault(c, seg[i])
        table = smap.slices([distinct[c] for c in range(len(distinct))])
        slices[seg_order, 1:] = table[seg_codes]
    slices[~keep] = -1
    n_slices = smap.size
    # membership: (conversation, slice) pairs of kept conversations
    rows, cs = np.nonzero(slices >= 0)
    member_slice = slices[rows, cs]

    def per_slice(values: np.ndarray) -> np.ndarray:
        """Sum per-conversation values (conv, ...) into (slice, ...)."""
        flat = values.reshape(n_conv, -1)[rows]
        out = np.zeros((n_slices, flat.shape[1]))
        np.add.at(out, member_slice, flat)
        return out.reshape((n_slices, *values.shape[1:]))

    sample = GateSample(paired, dict(smap.names), n_slices, per_slice(present.astype(float) * keep[:, None]))
    sample.counts = {
        "turns_baseline": int((side == 0).sum()),
        "turns_candidate": int((side == 1).sum()),
        "conversations_baseline": int(present[:, 0].sum()),
        "conversations_candidate": int(present[:, 1].sum()),
    }
    if paired:
        sample.counts["paired"] = int(keep.sum())
        sample.counts["unpaired_baseline"] = int((present[:, 0] & ~present[:, 1]).sum())
        sample.counts["unpaired_candidate"] = int((present[:, 1] & ~present[:, 0]).sum())
    lat = cols.latency
    baseline_lat = lat[(side == 0) & ~np.isnan(lat)]
    for mp in metrics:
        if mp.kind == "mean":
            x = _value(cols, mp)
            if paired:
                sample.diffs[mp.name], sample.means[mp.name] = _paired_means(
                    code, side, turn, x, n_conv, per_slice
                )
            else:
                ok = ~np.isnan(x)
                s = np.bincount(unit[ok], weights=x[ok], minlength=n_units).reshape(n_conv, 2)
                n = np.bincount(unit[ok], minlength=n_units).reshape(n_conv, 2).astype(float)
                sample.means[mp.name] = per_slice(_cluster_rows(s, n))
            continue
        if mp.kind == "tail":
            if not len(baseline_lat):
                continue
            q = float(np.quantile(baseline_lat, mp.quantile or 0.95))
            sample.tail_q[mp.name] = q
            hit = lat > q
        else:
            hit = np.asarray(cols.event(mp.name), bool)
        had = np.bincount(unit[hit], minlength=n_units).reshape(n_conv, 2) > 0
        sample.events[mp.name] = per_slice(had.astype(float))
        if paired:
            only = np.stack([had[:, 0] & ~had[:, 1], had[:, 1] & ~had[:, 0]], axis=1)
            sample.discordant[mp.name] = per_slice(only.astype(float))
    return sample


def _seg_key(seg: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(seg.items()))


def _paired_means(
    code: np.ndarray,
    side: np.ndarray,
    turn: np.ndarray,
    x: np.ndarray,
    n_conv: int,
    per_slice: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Differences of turns paired by (conversation, turn), summed per conversation, then per slice.

    Returns (slice, MEAN_FIELDS) sums of the differences and (slice, arm, MEAN_FIELDS) sums of the
    paired values of each arm (the estimates shown next to the difference). The first turn seen of a
    (conversation, turn, side) counts; a turn without a value on either side is not a pair.
    """
    ok = ~np.isnan(x)
    idx = np.flatnonzero(ok)
    key, n_keys = _codes(list(zip(code[idx].tolist(), turn[idx].tolist())))
    slot = key * 2 + side[idx]
    flat = np.full(2 * n_keys, math.nan)
    # first occurrence wins: assign in reverse so the earliest write is the last
    flat[slot[::-1]] = x[idx][::-1]
    val = flat.reshape(n_keys, 2)
    both = ~np.isnan(val).any(axis=1)
    conv_of_key = np.zeros(n_keys, np.int64)
    conv_of_key[key] = code[idx]
    kc = conv_of_key[both]
    d = val[both, 1] - val[both, 0]
    s = np.bincount(kc, weights=d, minlength=n_conv)
    n = np.bincount(kc, minlength=n_conv).astype(float)
    s0 = np.bincount(kc, weights=val[both, 0], minlength=n_conv)
    s1 = np.bincount(kc, weights=val[both, 1], minlength=n_conv)
    arms = np.stack([_cluster_rows(s0, n), _cluster_rows(s1, n)], axis=1)  # (conv, arm, F)
    return per_slice(_cluster_rows(s, n)), per_slice(arms)
