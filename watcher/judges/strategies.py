"""The rollout strategies: one registration each, the only place a strategy is declared.

A ``Strategy`` names everything the rest of watcher needs to know about it: the judge it starts
(``judge``) and restores from a checkpoint (``restore``), the arms its judge sees (``arms``), what the
engine must give that judge (whole ``Turn`` objects, the versions' history), how its decisions read
(``conduct``), the arm of its treatment's unlabelled turns and its treatment's share when a marker
gives none (``treatment_arm``, ``start_weight``: the rollout registry), the arms its judge compares
the treatment with (``control_arms``: the engine's coverage), and the rules its start marker must
meet (``check``). The engine, the decoder and the rollout registry read these; none of them names a
strategy.

Built in (docs/strategies/): ``canary`` (the concurrent judge, ``watcher.judges.canary``), ``flag``
(the same judge on the flag's variants within one version: treatment -> "canary", control ->
"baseline", so the sample-ratio check and every test apply unchanged), ``shadow`` (paired,
``watcher.judges.shadow``), ``blue_green`` (green after the switch against blue's history,
``watcher.judges.bluegreen``).

Third-party strategies are entry points of the group ``watcher.strategies`` whose name is the
strategy's and whose object is a ``Strategy`` (or a function returning one), loaded the first time
a marker or a checkpoint names them. An unknown name is an error naming it and the known ones
(``ConfigError``; a marker naming it is rejected as ``invalid_value``), never a fallback.

>>> STRATEGIES.names()
('blue_green', 'canary', 'flag', 'shadow')
>>> STRATEGIES.get("linear")
Traceback (most recent call last):
...
watcher.errors.ConfigError: strategy: unknown strategy 'linear' (known: blue_green, canary, flag, shadow)
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from watcher.contract import Action, Deployment, RejectReason, RolloutRef, TurnColumns
from watcher.errors import ConfigError
from watcher.judges.base import RolloutJudge
from watcher.judges.bluegreen import BlueGreenJudge, reference_history
from watcher.judges.canary import Judge
from watcher.judges.policy import Conduct, Policy
from watcher.judges.shadow import ShadowJudge
from watcher.state import Rollout, VersionHistory

__all__ = ["BUILT_IN", "ENTRY_POINT_GROUP", "STRATEGIES", "Strategy", "StrategyRegistry"]

ENTRY_POINT_GROUP = "watcher.strategies"

JudgeFactory = Callable[[Rollout, Policy, VersionHistory], RolloutJudge]
ArmMap = Callable[[Rollout, Sequence[Any], Sequence[str], TurnColumns], list[str]]
MarkerProblem = tuple[RejectReason, str]


@dataclass(frozen=True, slots=True)
class Strategy:
    """One rollout strategy (a registration; see the module docstring)."""

    name: str
    judge: JudgeFactory  # the judge of a starting rollout, with its policy and the versions' history
    restore: Callable[[dict[str, Any], Policy], RolloutJudge]  # from the judge's ``to_state``
    # the arms the judge sees, parallel to the turns (None: the routed arms as they are)
    arms: ArmMap | None = None
    whole_turns: bool = False  # the judge reads ``Turn`` objects: the batch is decoded into objects
    # the judge reads the versions' history: this makes the ``VersionHistory`` it needs, which the
    # engine keeps for agents without a rollout (what a switch is compared with) or in such a one
    history: Callable[[], VersionHistory] | None = None
    conduct: Conduct = Conduct()
    treatment_arm: str = "canary"  # the arm of the treatment version's turns that carry none
    # the arms its judge compares the treatment with (none: it compares with the versions' history)
    control_arms: tuple[str, ...] = ("baseline",)
    start_weight: float | None = None  # the treatment's share when the start marker gives none
    check: Callable[[Deployment], MarkerProblem | None] | None = None  # on its start markers
    description: str = ""


class StrategyRegistry:
    """Strategies by name: the built-in ones, then entry points of ``group`` as they are named.

    ``entry_points`` is injected (``importlib.metadata.entry_points`` in production) so a test can
    offer plug-ins without installing a package.
    """

    def __init__(
        self,
        strategies: Iterable[Strategy] = (),
        *,
        group: str = ENTRY_POINT_GROUP,
        entry_points: Callable[..., Any] = importlib.metadata.entry_points,
    ) -> None:
        self._strategies: dict[str, Strategy] = {}
        self._group = group
        self._entry_points = entry_points
        for s in strategies:
            self.register(s)

    def register(self, strategy: Strategy) -> None:
        """Add a strategy; a name registered twice is an error (a plug-in may not replace one)."""
        if not isinstance(strategy, Strategy):
            raise ConfigError("strategy", f"a registration must be a Strategy, got {type(strategy).__name__}")
        if strategy.name in self._strategies:
            raise ConfigError(f"strategy.{strategy.name}", "registered twice")
        self._strategies[strategy.name] = strategy

    def get(self, name: str) -> Strategy:
        """The strategy called ``name``, loading its entry point on first use."""
        found = self._strategies.get(name)
        if found is None:
            found = self._load(name)
        return found

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._strategies or name in self._plugins())

    def new_history(self) -> VersionHistory:
        """The versions' history the registered strategies read (the first that reads one; a plain
        one when none does)."""
        made = next((s.history for s in self._strategies.values() if s.history is not None), None)
        return made() if made is not None else VersionHistory()

    def names(self) -> tuple[str, ...]:
        """Every strategy name: registered and installed as entry points (not loaded)."""
        return tuple(sorted({*self._strategies, *self._plugins()}))

    def check_marker(self, marker: Deployment) -> MarkerProblem | None:
        """Why a deployment marker cannot be applied (None: it can): it names an unknown strategy, or
        it starts a rollout against its strategy's own rules. The decoders reject such markers
        (``decode_batch(check_marker=...)``, ``decode_deployment(check=...)``)."""
        if marker.strategy is None:
            return None
        try:
            strategy = self.get(marker.strategy)
        except ConfigError as e:
            return RejectReason.INVALID_VALUE, f"strategy: {e.message}" if e.field == "strategy" else str(e)
        if marker.action != "started" or strategy.check is None:
            return None
        return strategy.check(marker)

    # -- entry points -------------------------------------------------------------------------------
    def _plugins(self) -> dict[str, Any]:
        return {ep.name: ep for ep in self._entry_points(group=self._group)}

    def _load(self, name: str) -> Strategy:
        ep = self._plugins().get(name)
        if ep is None:
            raise ConfigError("strategy", f"unknown strategy {name!r} (known: {', '.join(self.names())})")
        where = f"strategy.{name}"
        try:
            obj = ep.load()
            strategy = obj if isinstance(obj, Strategy) else obj()
        except Exception as e:  # a broken plug-in is named, not a crash deep in the engine
            raise ConfigError(where, f"entry point {ep.value!r} failed to load: {e!r}") from e
        if not isinstance(strategy, Strategy) or strategy.name != name:
            raise ConfigError(where, f"entry point {ep.value!r} is not a Strategy named {name!r}")
        self.register(strategy)
        return strategy


# -- the built-in strategies ----------------------------------------------------------------------------
def _canary(rollout: Rollout, policy: Policy, history: VersionHistory) -> RolloutJudge:
    return Judge(rollout.ref(), policy, rollout.started_ts)


def _shadow(rollout: Rollout, policy: Policy, history: VersionHistory) -> RolloutJudge:
    return ShadowJudge(rollout.ref(), policy, rollout.started_ts)


def _blue_green(rollout: Rollout, policy: Policy, history: VersionHistory) -> RolloutJudge:
    return BlueGreenJudge(rollout.ref(), policy, rollout.started_ts, history)


def _flag_arms(rollout: Rollout, turns: Sequence[Any], arms: Sequence[str], cols: TurnColumns) -> list[str]:
    """The flag's variants as arms: treatment -> "canary", control -> "baseline", within the flag's
    version; turns of other versions, or without the flag, are "other" (not compared)."""
    flag = rollout.flag or {}
    name, control, treatment = flag.get("name", ""), flag.get("control"), flag.get("treatment")
    role = {treatment: "canary", control: "baseline"}
    variant = [role.get(f.get(name, ""), "other") for f in cols.flags]
    version = rollout.baseline_version
    if version is None:
        return variant
    return [v if same else "other" for v, same in zip(variant, cols.version_is(version).tolist())]


def _flag_check(marker: Deployment) -> MarkerProblem | None:
    flag = marker.flag
    if flag is None:
        return RejectReason.MISSING_FIELD, "flag: required when strategy is 'flag' and action 'started'"
    if flag.control == flag.treatment:
        return (
            RejectReason.INVALID_VALUE,
            f"flag: control and treatment are the same variant {flag.control!r}",
        )
    return None


def _flag_name(r: RolloutRef) -> str:
    return str((r.flag or {}).get("name"))


BUILT_IN: tuple[Strategy, ...] = (
    Strategy(
        "canary",
        _canary,
        Judge.from_state,
        description="treatment vs concurrent control traffic (docs/statistics.md)",
    ),
    Strategy(
        "flag",
        _canary,
        Judge.from_state,
        arms=_flag_arms,
        conduct=Conduct(
            meanings={
                Action.ROLLBACK: lambda r: (
                    f"turn flag {_flag_name(r)} off (serve {(r.flag or {}).get('control')})"
                ),
                Action.PAUSE: lambda r: f"hold flag {_flag_name(r)} at its current exposure",
                Action.PROMOTE: lambda r: (
                    f"roll flag {_flag_name(r)} out ({(r.flag or {}).get('treatment')}) to everyone"
                ),
            }
        ),
        check=_flag_check,
        description="a flag's treatment vs control variant within one version (docs/strategies/flag.md)",
    ),
    Strategy(
        "shadow",
        _shadow,
        ShadowJudge.from_state,
        whole_turns=True,  # pairs whole turns by (conversation_id, turn)
        conduct=Conduct(
            rollback_only=True,  # a shadow serves no customer: a divergence ends it, nothing to pause
            meanings={
                Action.ROLLBACK: lambda r: f"stop shadowing {r.canary_version}: it diverges from live",
                Action.PROMOTE: lambda r: f"{r.canary_version} is ready for canary traffic",
            },
        ),
        treatment_arm="shadow",
        control_arms=("live", "baseline"),
        description="each shadow turn paired with the live turn it copies (docs/strategies/shadow.md)",
    ),
    Strategy(
        "blue_green",
        _blue_green,
        BlueGreenJudge.from_state,
        history=reference_history,
        conduct=Conduct(
            meanings={
                Action.ROLLBACK: lambda r: f"switch traffic back to blue {r.baseline_version}",
                Action.PAUSE: lambda r: f"keep blue {r.baseline_version} ready; a human decides",
                Action.PROMOTE: lambda r: f"retire blue {r.baseline_version}",
            }
        ),
        start_weight=1.0,  # the switch moves all traffic to green
        control_arms=(),  # green is compared with blue's history before the switch, not with turns
        description="green after the switch vs blue before it (docs/strategies/blue_green.md)",
    ),
)
STRATEGIES = StrategyRegistry(BUILT_IN)  # the process's registry: built-in, then entry points
