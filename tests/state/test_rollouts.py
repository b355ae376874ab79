from __future__ import annotations

from dataclasses import dataclass

from watcher.state.rollouts import PlainTerms, Registry, RolloutState, rollout_id


@dataclass
class M:
    action: str
    ts: float
    agent_id: str = "bot"
    environment: str = "prod"
    event_id: str = "e"
    strategy: str | None = "canary"
    baseline_version: str | None = "v1"
    canary_version: str | None = "v2"
    canary_weight: float | None = 0.1
    actor: str | None = "test"
    flag: object = None


@dataclass
class T:
    version: str
    arm: str | None
    ts: float = 0.0
    agent_id: str = "bot"
    environment: str = "prod"


def test_lifecycle_started_weight_paused_resumed_promoted() -> None:
    reg = Registry()
    change = reg.apply(M("started", 100.0))
    assert change.kind == "started"
    r = change.rollout
    assert r is not None and r.state is RolloutState.RUNNING and r.canary_weight == 0.1
    assert r.rollout_id == rollout_id("bot", "prod", "canary", "v2", 100.0)
    assert reg.apply(M("weight_changed", 200.0, canary_weight=0.5)).rollout.canary_weight == 0.5
    assert reg.apply(M("paused", 300.0)).rollout.state is RolloutState.PAUSED
    assert reg.apply(M("resumed", 310.0)).rollout.state is RolloutState.RUNNING
    ended = reg.apply(M("promoted", 400.0))
    assert ended.kind == "ended" and ended.rollout.state is RolloutState.PROMOTED
    assert ended.rollout.ended_ts == 400.0
    assert reg.active("bot", "prod") is None
    assert reg.baseline("bot", "prod") == "v2"  # the promoted version is the new baseline
    assert [m["action"] for m in reg.get(r.rollout_id).markers] == [
        "started",
        "weight_changed",
        "paused",
        "resumed",
        "promoted",
    ]
    assert reg.marker_times[("bot", "prod", "promoted", "v2")] == 400.0


def test_an_older_marker_does_not_undo_a_newer_weight() -> None:
    """The docs' example marker (days old, weight 0.1) posted during a rollout at 0.3 used to set the
    weight back to 0.1 without a word: the newest weight in event time wins, the marker is recorded
    and the answer says what was not applied."""
    reg = Registry()
    reg.apply(M("started", 1_000.0, canary_weight=0.1))
    assert reg.apply(M("weight_changed", 2_000.0, canary_weight=0.3)).rollout.canary_weight == 0.3
    late = reg.apply(M("started", 500.0, canary_weight=0.1, event_id="dep-77"))
    assert late.kind == "updated" and late.rollout.canary_weight == 0.3
    assert "canary_weight 0.1 not applied: a newer marker (ts 2000.0) set it" == late.note
    assert [m["event_id"] for m in late.rollout.markers][-1] == "dep-77"  # kept in the history
    newer = reg.apply(M("weight_changed", 3_000.0, canary_weight=0.5))
    assert newer.rollout.canary_weight == 0.5 and newer.note == ""


def test_markers_without_rollout_are_orphans_but_recorded() -> None:
    reg = Registry()
    assert reg.apply(M("paused", 5.0)).kind == "orphan"
    assert ("bot", "prod", "paused", "v2") in reg.marker_times


def test_new_start_supersedes_running_rollout() -> None:
    reg = Registry()
    first = reg.apply(M("started", 1.0)).rollout
    change = reg.apply(M("started", 2.0, canary_version="v3"))
    assert change.superseded is not None and change.superseded.rollout_id == first.rollout_id
    assert reg.get(first.rollout_id).state is RolloutState.ABORTED
    assert reg.active("bot", "prod").canary_version == "v3"


def test_repeated_start_marker_updates_instead_of_restarting() -> None:
    reg = Registry()
    first = reg.apply(M("started", 1.0)).rollout
    again = reg.apply(M("started", 2.0, canary_weight=0.2))
    assert again.kind == "updated" and again.rollout.rollout_id == first.rollout_id
    assert again.rollout.canary_weight == 0.2


def test_arms_resolved_from_active_rollout() -> None:
    reg = Registry()
    reg.apply(M("started", 1.0))
    arms, _ = reg.route([T("v2", None), T("v1", None), T("v9", None), T("v1", "shadow")])
    assert arms == ["canary", "baseline", "live", "shadow"]
    other = T("v2", None, agent_id="other")
    assert reg.route([other])[0] == ["live"]


def test_auto_start_when_canary_appears_next_to_known_baseline() -> None:
    reg = Registry(auto_canary_weight=0.05)
    arms, changes = reg.route([T("v1", "live", ts=10.0)])
    assert changes == [] and arms == ["live"]
    arms, changes = reg.route([T("v1", "baseline", ts=11.0), T("v2", "canary", ts=12.0)])
    assert len(changes) == 1 and changes[0].kind == "started"
    r = changes[0].rollout
    assert (r.baseline_version, r.canary_version, r.source, r.canary_weight) == ("v1", "v2", "auto", 0.05)
    assert r.started_ts == 12.0
    # no second rollout for the same canary
    assert reg.route([T("v2", "canary", ts=13.0)])[1] == []


def test_no_auto_start_without_known_baseline_or_when_disabled() -> None:
    assert Registry().route([T("v2", "canary")])[1] == []
    reg = Registry(auto_start=False)
    reg.route([T("v1", "live")])
    assert reg.route([T("v2", "canary")])[1] == []


def test_state_round_trip() -> None:
    reg = Registry()
    reg.apply(M("started", 1.0))
    reg.apply(M("weight_changed", 2.0, canary_weight=0.3))
    reg.route([T("v1", "baseline")])
    other = Registry()
    other.load_state(reg.to_state())
    assert other.to_state() == reg.to_state()
    assert other.active("bot", "prod") == reg.active("bot", "prod")


def test_start_marker_after_auto_start_is_adopted_not_superseding() -> None:
    """Markers and telemetry travel in different topics: telemetry may reveal a canary first."""
    reg = Registry(auto_canary_weight=0.1)
    reg.route([T("v1", "baseline", ts=1.0)])
    auto = reg.route([T("v2", "canary", ts=2.0)])[1][0].rollout
    change = reg.apply(M("started", 3.0, canary_weight=0.25))
    assert change.kind == "rebased" and change.superseded is None
    r = change.rollout
    assert r.rollout_id == auto.rollout_id  # the same rollout, now with the deployer's numbers
    assert (r.canary_weight, r.source, r.started_ts) == (0.25, "marker", 3.0)
    assert reg.apply(M("started", 4.0, canary_weight=0.3)).kind == "updated"  # later repeats only update


def test_what_a_strategy_implies_comes_from_its_terms() -> None:
    """The registry names no strategy: the treatment's arm and default share are its terms'."""
    terms = {"shadow": PlainTerms("shadow"), "blue_green": PlainTerms(start_weight=1.0)}
    reg = Registry(auto_canary_weight=0.1, terms=lambda s: terms.get(s, PlainTerms()))
    r = reg.apply(M("started", 1.0, strategy="blue_green", canary_weight=None)).rollout
    assert r is not None and r.canary_weight == 1.0
    r = reg.apply(M("started", 2.0, strategy="shadow", canary_version="v3", canary_weight=None)).rollout
    assert r is not None and r.canary_weight == 0.1
    assert reg.route([T("v3", None), T("v1", None)])[0] == ["shadow", "baseline"]
    plain = Registry()  # told nothing: every strategy reads as a canary
    plain.apply(M("started", 2.0, strategy="shadow", canary_version="v3", canary_weight=None))
    assert plain.route([T("v3", None)])[0] == ["canary"]
