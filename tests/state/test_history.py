"""The version history at platform scale: sparse cells, one table for all agents, pruning of buckets no
reference could use, and states of before (v1-v3) upgraded to the same references."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.support.state import roundtrip
from watcher.sim import strategy_traffic as tf
from watcher.state.history import VersionHistory
from watcher.state.tracker import F_CONV, LATENCY_MAX

DATA = Path(__file__).with_name("data")


def _traffic(
    agents: int, conv_per_min: float, minutes: float, seed: int = 1, agent: str = "a"
) -> list[tuple[list[tf.T], list[str]]]:
    """Batches of live turns of ``agents`` agents (version v1), time-ordered."""
    out = []
    for turns, _ in tf.shadow(tf.Traffic(minutes=minutes, conv_per_min=conv_per_min), seed, paired=False):
        for t in turns:
            t.agent_id = f"{agent}{zlib.crc32(t.conversation_id.encode()) % agents}"
            t.version = "v1"
        out.append((turns, ["live"] * len(turns)))
    return out


def test_state_v3_upgrades_to_the_same_references_and_goes_on() -> None:
    """A checkpoint written before #13 (tests/state/data/history_v3.json, made by that version) gives the
    same references; its conversations go on in their rows (a later turn is no new conversation)."""
    d = json.loads((DATA / "history_v3.json").read_text())
    h = VersionHistory.from_state(d["state"])
    for name, want in d["reference"].items():
        agent, version = name.split("/")
        got = h.reference(agent, "prod", version, tf.T0 - 3600, tf.T0 + 6 * 3600)
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key] == pytest.approx(np.asarray(value), rel=1e-12, abs=1e-12), (name, key)
    before = h.reference("bot", "prod", "v3", tf.T0 - 3600, tf.T0 + 6 * 3600)["all"][F_CONV]
    again = next(k for k, r in h.conv.cur.items() if k[0] == h._ae[("bot", "prod")])
    t = tf.T(h.watermark, again[1], 9, "v3", {}, 400.0, 0.8, False, False, False)
    h.update([t], ["live"])
    assert h.reference("bot", "prod", "v3", tf.T0 - 3600, tf.T0 + 6 * 3600)["all"][F_CONV] == before
    assert VersionHistory.from_state(roundtrip(h.to_state())).to_state() == h.to_state()


def test_state_v2_buckets_have_no_latency_histogram_until_new_ones() -> None:
    d = json.loads((DATA / "history_v3.json").read_text())["state"]
    d["v"] = 2
    del d["hists"]
    h = VersionHistory.from_state(d)
    assert LATENCY_MAX not in h.reference("bot", "prod", "v3", tf.T0 - 3600, tf.T0 + 6 * 3600)
    late = h.watermark + 4 * 3600  # a bucket of its own
    h.update([tf.T(late, "fresh", 0, "v3", {}, 400.0, 0.8, False, False, False)], ["live"])
    assert h.reference("bot", "prod", "v3", late, late + 1)[LATENCY_MAX].sum() == 1


def test_many_quiet_agents_cost_cells_not_dense_buckets() -> None:
    """500 agents sharing 20 conversations a minute for an hour: one conversation table, and field cells
    only where conversations landed."""
    h = VersionHistory()
    for turns, arms in _traffic(500, 20, 60):
        h.update(turns, arms)
    assert len(h.versions()) > 400
    buckets = len(h._vb)
    assert buckets >= len(h.versions())
    assert len(h.fields) < 8 * buckets  # a few slices per quiet bucket, not all 53
    assert len(h.conv.sums) <= 4096  # rows for the ~1,200 conversations, not the 2 x 200,000 of the bound
    # dense, each bucket would hold 53 slices x 16 fields x 8 B and a 673-bin histogram: 9.5 KB
    assert h.nbytes < 0.6 * buckets * 9480


def test_buckets_no_window_could_use_are_dropped_and_the_others_are_exact() -> None:
    """With blue-green's rule (100 conversations in 5 consecutive buckets), an agent with ~1 conversation
    per minute keeps only the buckets of its last hours, a busy one keeps everything; every reference that
    meets the rule is what an unpruned history answers."""
    pruned = VersionHistory(min_window=(100, 5))
    full = VersionHistory()
    batches = _traffic(1, 20.0, 600, agent="busy") + _traffic(1, 0.5, 600, seed=2, agent="quiet")
    batches.sort(key=lambda b: b[0][0].ts)
    for turns, arms in batches:
        pruned.update(turns, arms)
        full.update(turns, arms)
    bucket = pruned.bucket_s
    quiet = [vb for vb in pruned._vb if pruned._rev[vb >> 30][0] == "quiet0"]
    busy = [vb for vb in pruned._vb if pruned._rev[vb >> 30][0] == "busy0"]
    assert 0 < len(quiet) <= 6  # the last ~2.5 h, not 10 h
    assert len(busy) == len([vb for vb in full._vb if full._rev[vb >> 30][0] == "busy0"]) >= 20
    for agent in ("busy0", "quiet0"):
        for start in np.arange(tf.T0, tf.T0 + 10 * 3600, 600.0):
            want = full.reference(agent, "prod", "v1", start, start + 7200)
            if not want or want["all"][F_CONV] < 100:
                continue
            got = pruned.reference(agent, "prod", "v1", start, start + 7200)
            assert {k: v.tolist() for k, v in got.items()} == {k: v.tolist() for k, v in want.items()}
    assert bucket == 1800.0 and len(full._vb) > len(pruned._vb)


def test_retired_version_leaves_the_history() -> None:
    h = VersionHistory()
    for turns, arms in _traffic(3, 10, 20):
        h.update(turns, arms)
    assert ("a0", "prod", "v1") in h.versions()
    h.forget_version("a0", "prod", "v1")
    assert ("a0", "prod", "v1") not in h.versions()
    assert h.reference("a0", "prod", "v1", tf.T0 - 3600, tf.T0 + 3600) == {}
    assert all(h._rev[vb >> 30][0] != "a0" for vb in h._vb)
