"""Every strategy judges the traffic it gets; a rollout that cannot be judged says why."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry

from watcher.config import load_settings
from watcher.engine import Coverage, Engine, Unjudged, Unused
from watcher.judges import STRATEGIES
from watcher.service.series_text import render_metrics
from watcher.service.telemetry import StateCollector
from watcher.sim.presets import PRESETS, STRATEGY_PRESETS
from watcher.sim.scenario import Regression
from watcher.sim.traffic import generate


def _run(scenario, batch: int = 1000) -> tuple[Engine, list]:
    engine = Engine(load_settings(environ={}))
    lines = list(generate(scenario))
    decisions = []
    for i in range(0, len(lines), batch):
        decisions += engine.process(lines[i : i + batch]).decisions
    return engine, decisions


def _metrics(engine: Engine) -> str:
    registry = CollectorRegistry()
    registry.register(StateCollector(engine))
    return render_metrics(registry).decode()


def test_blue_green_judges_turns_labelled_live() -> None:
    # a router that knows only live traffic labels blue and green "live": green is still the treatment
    base = STRATEGY_PRESETS["blue_green_regression"]
    live, decisions = _run(dataclasses.replace(base, arm_label="live"))
    assert [d.action.value for d in decisions] == ["rollback"], "green's regression must be decided"
    (cov,) = live.coverage.values()
    assert cov.problem is None and cov.treatment > 1000
    unlabelled, same = _run(base)  # arm null: the rollout resolves it, as before
    assert [d.to_dict() for d in same] == [d.to_dict() for d in decisions]


def test_a_canary_that_gets_only_shadow_turns_says_it_is_not_judged() -> None:
    sc = dataclasses.replace(PRESETS["healthy"], duration_s=300.0, conversations_per_s=4.0)
    sc = dataclasses.replace(sc, arm_label="shadow")
    engine, decisions = _run(sc)
    assert not decisions
    (rid, cov) = next(iter(engine.coverage.items()))
    assert cov.problem is Unjudged.NO_TREATMENT and cov.unused["unusable_arm"] > 200
    text = _metrics(engine)
    assert 'watcher_rollouts_unjudged{reason="no_treatment"} 1.0' in text
    assert 'watcher_rollouts_unjudged{reason="no_control"} 0.0' in text
    assert f'rollout_id="{rid}"' in text and 'reason="no_treatment"} 1.0' in text


def test_a_canary_without_control_turns_says_so() -> None:
    # every turn is of the canary version (the baseline's telemetry is missing)
    sc = dataclasses.replace(PRESETS["healthy"], duration_s=600.0, conversations_per_s=4.0, canary_weight=1.0)
    engine, _ = _run(sc)
    (cov,) = engine.coverage.values()
    assert cov.problem is Unjudged.NO_CONTROL and cov.control == 0
    assert "no control turn" in cov.to_dict()["detail"]


def test_blue_green_without_history_says_it_has_no_reference() -> None:
    errors = (Regression("error", 4.0, mode="multiply"),)
    healthy = STRATEGY_PRESETS["blue_green_healthy"]
    sc = dataclasses.replace(healthy, switch_s=0.0, duration_s=300.0, regressions=errors)
    engine, decisions = _run(sc)
    (cov,) = engine.coverage.values()
    assert cov.problem is Unjudged.NO_REFERENCE and not decisions


def test_coverage_reads_the_strategys_control_arms_not_its_name() -> None:
    # the built-in registrations: blue-green compares with history, so it has no control arm
    assert STRATEGIES.get("blue_green").control_arms == ()
    assert STRATEGIES.get("shadow").control_arms == ("live", "baseline")
    assert STRATEGIES.get("canary").control_arms == ("baseline",)
    # turns only of the treatment: a missing control for a strategy that compares with turns...
    with_turns = Coverage(("baseline",))
    with_turns.add(250, 0, [])
    assert with_turns.assess()[0] is Unjudged.NO_CONTROL
    # ...and nothing missing for one that compares with history, whose old-version turns are counted
    # as such (any strategy so registered, whatever its name)
    with_history = Coverage(())
    with_history.add(250, 0, ["baseline"] * 10)
    assert with_history.assess() == (None, "")
    assert with_history.unused == {Unused.OLD_VERSION.value: 10}
