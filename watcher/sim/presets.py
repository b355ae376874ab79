"""Named scenarios: those of the demo and the detection benchmark (``PRESETS``, documented in
docs/simulator.md) and those of the other rollout strategies (``STRATEGY_PRESETS``, docs/strategies/)."""

from __future__ import annotations

from typing import Any

from watcher.sim.scenario import ArmProfile, Regression, Scenario

__all__ = ["PRESETS", "STRATEGY_PRESETS"]


def _preset(name: str, description: str, **kw: Any) -> Scenario:
    return Scenario(name=name, description=description, **kw)


_R = Regression
PRESETS: dict[str, Scenario] = {
    p.name: p
    for p in (
        _preset("healthy", "canary behaves like the baseline; daily cycle on", daily_cycle=True),
        _preset(
            "demo",
            "quality -0.2 for intent=billing from minute 2 (the live demo)",
            duration_s=900.0,
            conversations_per_s=10.0,
            canary_weight=0.2,
            regressions=(_R("quality", -0.2, start_s=120.0, segment={"intent": "billing"}),),
        ),
        _preset(
            "escalation_up",
            "escalation probability x2 from 300 s",
            regressions=(_R("escalation", 2.0, start_s=300.0, mode="multiply"),),
        ),
        _preset("latency_up", "latency +25 % from 300 s", regressions=(_R("latency", 0.25, start_s=300.0),)),
        _preset(
            "slow_tail",
            "5 % of turns 4x slower from 300 s (p95/p99 move, the median barely)",
            regressions=(_R("latency_tail", 0.05, start_s=300.0, slow_factor=4.0),),
        ),
        _preset(
            "errors_x4",
            "error probability x4 from 300 s",
            regressions=(_R("error", 4.0, start_s=300.0, mode="multiply"),),
        ),
        _preset(
            "compliance_x5",
            "compliance-violation probability x5 from 300 s",
            regressions=(_R("compliance", 5.0, start_s=300.0, mode="multiply"),),
        ),
        _preset(
            "gradual_quality",
            "quality ramps down to -0.1 between 300 s and 1200 s",
            duration_s=2400.0,
            regressions=(_R("quality", -0.1, start_s=300.0, shape="gradual", ramp_s=900.0),),
        ),
        _preset(
            "segment_quality_while_average_improves",
            "quality +0.03 everywhere but -0.2 for intent=cancellation: the average improves",
            regressions=(_R("quality", 0.03), _R("quality", -0.2, segment={"intent": "cancellation"})),
        ),
        _preset(
            "broken_from_start",
            "canary broken from its first turn: errors x20, quality -0.25",
            duration_s=600.0,
            regressions=(_R("error", 20.0, mode="multiply"), _R("quality", -0.25)),
        ),
        _preset("a_a", "identical arms under two version labels (type-I error runs)", duration_s=3600.0),
        _preset(
            "both_arms_drift",
            "both arms degrade together (quality -0.1, latency +30 %), a fast daily "
            "cycle and a traffic-mix shift towards cancellations: no canary difference",
            duration_s=3600.0,
            daily_cycle=True,
            cycle_period_s=1800.0,
            mix_change_s=1800.0,
            mix_after={
                "intent": {
                    "billing": 0.2,
                    "tech_support": 0.3,
                    "cancellation": 0.3,
                    "sales": 0.1,
                    "other": 0.1,
                }
            },
            regressions=(
                _R(
                    "quality",
                    -0.1,
                    start_s=600.0,
                    shape="gradual",
                    ramp_s=1200.0,
                    arms=("baseline", "canary"),
                ),
                _R("latency", 0.3, start_s=900.0, arms=("baseline", "canary")),
            ),
        ),
        _preset(
            "low_traffic",
            "0.2 conversations/s: the judge must stay inconclusive, never fail",
            conversations_per_s=0.2,
            duration_s=3600.0,
        ),
        _preset(
            "rare_events",
            "errors 0.05 %, compliance 0.02 %, identical arms: rare-event false alarms",
            duration_s=3600.0,
            baseline=ArmProfile(error_rate=0.0005, compliance_rate=0.0002),
        ),
        _preset(
            "long_conversations",
            "~15 turns per conversation (up to 60), strong within-conversation correlation, identical arms",
            mean_turns=15.0,
            max_turns=60,
            conversations_per_s=5.0,
            conversation_effect=1.5,
        ),
        _preset(
            "srm", "20 % of canary conversations lose their telemetry (sample-ratio mismatch)", srm_drop=0.2
        ),
    )
}


# Strategy scenarios (shadow, blue-green, flag): kept apart from PRESETS, whose set the canary
# benchmark and docs/simulator.md enumerate. docs/strategies/ documents them.
STRATEGY_PRESETS: dict[str, Scenario] = {
    p.name: p
    for p in (
        _preset(
            "shadow_healthy",
            "shadow answers every live turn, no difference",
            strategy="shadow",
            duration_s=1800.0,
            conversations_per_s=5.0,
        ),
        _preset(
            "shadow_quality_down",
            "the shadow's quality is 0.08 lower",
            strategy="shadow",
            duration_s=1800.0,
            conversations_per_s=5.0,
            regressions=(_R("quality", -0.08),),
        ),
        _preset(
            "shadow_errors_x4",
            "the shadow errs 4x as often",
            strategy="shadow",
            duration_s=1800.0,
            conversations_per_s=5.0,
            regressions=(_R("error", 4.0, mode="multiply"),),
        ),
        _preset(
            "blue_green_healthy",
            "switch to an identical green after 30 min",
            strategy="blue_green",
            duration_s=3000.0,
            switch_s=1800.0,
            conversations_per_s=5.0,
        ),
        _preset(
            "blue_green_regression",
            "green's quality is 0.08 lower after the switch",
            strategy="blue_green",
            duration_s=3000.0,
            switch_s=1800.0,
            conversations_per_s=5.0,
            regressions=(_R("quality", -0.08),),
        ),
        _preset(
            "blue_green_healthy_daily",
            "switch to an identical green after 30 min, daily cycle on (time-of-day drift across the switch)",
            strategy="blue_green",
            duration_s=3000.0,
            switch_s=1800.0,
            conversations_per_s=5.0,
            daily_cycle=True,
        ),
        _preset(
            "blue_green_errors_x4",
            "green errs 4x as often after the switch, daily cycle on",
            strategy="blue_green",
            duration_s=3000.0,
            switch_s=1800.0,
            conversations_per_s=5.0,
            daily_cycle=True,
            regressions=(_R("error", 4.0, start_s=1800.0, mode="multiply"),),
        ),
        _preset(
            "flag_healthy",
            "flag treatment on 50 % of conversations, no difference",
            strategy="flag",
            canary_weight=0.5,
            duration_s=1800.0,
            conversations_per_s=5.0,
        ),
        _preset(
            "flag_errors_x4",
            "the flag's treatment errs 4x as often",
            strategy="flag",
            canary_weight=0.5,
            duration_s=1800.0,
            conversations_per_s=5.0,
            regressions=(_R("error", 4.0, mode="multiply"),),
        ),
    )
}
