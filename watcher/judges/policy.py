"""Policy: what counts as a regression, and the pure decision function.

``load_policy`` reads the YAML policy into frozen settings, on top of the bundled defaults: each
metric's from the metric catalogue (``watcher.contract.catalogue``), the rest from
``default_policy.yaml``; ``decide`` maps (previous state, evidence) to (decision or None, new state) with no
side effects, so replaying the same evidence gives the same decisions and the same ids.

Latching: ``rollback`` and ``promote`` are terminal (only a human override follows them); ``pause``
holds until a human acknowledges or overrides it, and may still escalate to ``rollback``. A cause a
human acknowledged does not pause the rollout again (an e-value that crossed its threshold stays
above it, so it would otherwise re-pause at once).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from watcher.config import Section, convert, read_yaml
from watcher.contract import (
    CATALOGUE,
    Action,
    Cause,
    Decision,
    Direction,
    Kind,
    MetricEvidence,
    RolloutEvidence,
    RolloutRef,
    ToleranceMode,
    Verdict,
    decision_id,
    metric_def,
    metric_names,
)
from watcher.errors import ConfigError

__all__ = [
    "MetricPolicy",
    "PromoteRule",
    "SegmentSettings",
    "SrmSettings",
    "ChangepointSettings",
    "Policy",
    "PolicySet",
    "PolicyState",
    "load_policy",
    "decide",
    "override",
    "acknowledge",
    "Conduct",
    "DEFAULT_POLICY_PATH",
    "layout_change",
    "policy_to_doc",
    "policy_from_doc",
]

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.yaml")


@dataclass(frozen=True, slots=True)
class MetricPolicy:
    name: str  # a catalogue metric (``watcher.contract.catalogue``): quality, latency, latency_pNN, ...
    direction: Direction
    tolerance: float  # the worst acceptable effect, signed, in effect units (-0.03, 1.10, 1.25 ...)
    tolerance_mode: ToleranceMode
    critical: bool = False  # a failure always rolls back
    min_samples: int = 30  # conversations per arm before the metric is judged at all
    on_regression: Action = Action.PAUSE  # pause | rollback
    enabled: bool = True
    promote_gate: bool = True  # must pass non-inferiority (overall) before promotion
    # The non-inferiority margin of promotion (None: ``tolerance``). Kept apart from ``tolerance``
    # because a margin tight enough to act on small regressions is too tight to prove in a
    # reasonable time that a healthy canary is no worse than it (docs/statistics.md).
    promote_tolerance: float | None = None

    @property
    def pass_tolerance(self) -> float:
        """The margin the PASS (non-inferiority) test uses: ``promote_tolerance`` or ``tolerance``."""
        return self.tolerance if self.promote_tolerance is None else self.promote_tolerance

    @property
    def kind(self) -> Kind:
        """mean (quality, log-latency), rate, or tail (exceedance of a baseline quantile)."""
        return metric_def(self.name).kind

    @property
    def quantile(self) -> float | None:
        """A tail metric's quantile of the control (``latency_p95``: 0.95)."""
        return metric_def(self.name).quantile

    @property
    def action(self) -> Action:
        return Action.ROLLBACK if self.critical else self.on_regression


class PromoteRule(Section, frozen=True):
    enabled: bool = True
    min_duration_s: Annotated[float, Meta(ge=0, le=1e8)] = 1800.0
    min_conversations: Annotated[int, Meta(ge=0, le=10**9)] = 1000  # per arm
    # non-inferiority; all guardrails must pass (intersection-union: no split)
    alpha: Annotated[float, Meta(gt=0, le=0.5)] = 0.05


class SegmentSettings(Section, frozen=True):
    enabled: bool = True
    keys: tuple[Annotated[str, Meta(min_length=1)], ...] = ()  # empty: the first `max_keys` keys seen
    max_keys: Annotated[int, Meta(ge=1, le=16)] = 4  # at least len(keys) (``load_policy`` raises it)
    max_values_per_key: Annotated[int, Meta(ge=1, le=200)] = 12  # more values fold into "__other__"
    min_conversations: Annotated[int, Meta(ge=1, le=10**9)] = 100  # per arm before a slice is judged
    budget_share: Annotated[float, Meta(ge=0, le=0.9)] = 0.3  # share of alpha spread over the segment slices


class SrmSettings(Section, frozen=True):
    enabled: bool = True
    alpha: Annotated[float, Meta(gt=0, le=0.5)] = 0.001
    min_conversations: Annotated[int, Meta(ge=0, le=10**9)] = (
        100  # in total before a mismatch may be declared
    )
    # conversations starting this soon after a weight change are not counted
    grace_s: Annotated[float, Meta(ge=0, le=1e6)] = 60.0


class ChangepointSettings(Section, frozen=True):
    enabled: bool = True
    epoch_s: Annotated[float, Meta(gt=1, le=1e8)] = 1800.0
    restart_share: Annotated[float, Meta(ge=0, le=0.9)] = (
        0.5  # share of each test's alpha spent on restarted tests
    )
    span_epochs: Annotated[int, Meta(ge=1, le=48)] = (
        4  # a restarted test sees the conversations of this many epochs
    )


@dataclass(frozen=True, slots=True)
class Policy:
    alpha: float = 0.01
    metrics: tuple[MetricPolicy, ...] = ()
    promote: PromoteRule = field(default_factory=PromoteRule)
    segments: SegmentSettings = field(default_factory=SegmentSettings)
    srm: SrmSettings = field(default_factory=SrmSettings)
    changepoint: ChangepointSettings = field(default_factory=ChangepointSettings)

    def enabled_metrics(self) -> tuple[MetricPolicy, ...]:
        return tuple(m for m in self.metrics if m.enabled)

    def metric(self, name: str) -> MetricPolicy | None:
        return next((m for m in self.metrics if m.name == name), None)


@dataclass(frozen=True, slots=True)
class PolicySet:
    default: Policy
    overrides: dict[tuple[str, str], Policy] = field(default_factory=dict)  # (agent, env or "*")

    def for_agent(self, agent_id: str, environment: str) -> Policy:
        return (
            self.overrides.get((agent_id, environment)) or self.overrides.get((agent_id, "*")) or self.default
        )


# -- loading ----------------------------------------------------------------------------------------
class _MetricDoc(Section, frozen=True):
    """One metric as a policy file writes it; ``_metric`` resolves the defaults that depend on its
    name and checks the margins against its direction."""

    tolerance: Annotated[float, Meta(ge=-1e6, le=1e6)]
    promote_tolerance: Annotated[float, Meta(ge=-1e6, le=1e6)] | None = None
    direction: Direction | None = None  # None: the metric's (the catalogue's)
    tolerance_mode: ToleranceMode | None = None  # None: the metric's; a metric supports only its own
    critical: bool = False
    min_samples: Annotated[int, Meta(ge=1, le=10**9)] = 30
    on_regression: Literal["pause", "rollback"] = "pause"
    enabled: bool = True
    promote_gate: bool = True


class _PolicyDoc(Section, frozen=True):
    """A policy as a file writes it (``defaults``, or one agent's and environment's layer on top)."""

    alpha: Annotated[float, Meta(gt=0, le=0.5)] = 0.01
    metrics: dict[str, Any] = {}  # by name; each a _MetricDoc, checked with its name
    promote: PromoteRule = msgspec.field(default_factory=PromoteRule)
    segments: SegmentSettings = msgspec.field(default_factory=SegmentSettings)
    srm: SrmSettings = msgspec.field(default_factory=SrmSettings)
    changepoint: ChangepointSettings = msgspec.field(default_factory=ChangepointSettings)


class _PolicyFile(Section, frozen=True):
    version: Literal[1] = 1
    defaults: dict[str, Any] = {}
    # agent -> environment (or "*") -> a layer on top of the defaults (checked level by level, so an
    # error names the agent and the environment)
    agents: dict[str, Any] = {}


def load_policy(path: str | Path | None = None) -> PolicySet:
    """Bundled defaults, with the file's ``defaults`` and per-agent ``agents`` merged on top. A bad
    value is a ``ConfigError`` on its field in the file ("defaults.alpha"), and says which file."""
    try:
        return _load_policy(path)
    except ConfigError as exc:
        where = str(path) if path is not None else "the bundled policy"
        if where in exc.message:
            raise
        raise ConfigError(exc.field, f"{exc.message} (policy file {where})") from None


def _load_policy(path: str | Path | None) -> PolicySet:
    base = {**_read(DEFAULT_POLICY_PATH).defaults, "metrics": _catalogue_defaults()}
    doc = _PolicyFile()
    if path is not None:
        doc = _read(Path(path))
        base = _layer(base, doc.defaults)
    default = _policy(base, "defaults")
    overrides: dict[tuple[str, str], Policy] = {}
    for agent, envs in doc.agents.items():
        for env, over in convert(envs, dict[str, Any], f"agents.{agent}").items():
            prefix = f"agents.{agent}.{env}"
            layer = convert(over, dict[str, Any], prefix)
            overrides[(str(agent), str(env))] = _policy(_layer(base, layer), prefix)
    return PolicySet(default, overrides)


def policy_to_doc(p: Policy) -> dict[str, Any]:
    """The policy in its YAML form (JSON-safe): ``policy_from_doc`` reads it back to an equal Policy.
    Checkpoints keep the policy each judge runs with this way (``Engine.to_state``)."""
    metrics = {
        m.name: {
            "direction": m.direction.value,
            "tolerance": m.tolerance,
            "promote_tolerance": m.promote_tolerance,
            "tolerance_mode": m.tolerance_mode.value,
            "critical": m.critical,
            "min_samples": m.min_samples,
            "on_regression": m.on_regression.value,
            "enabled": m.enabled,
            "promote_gate": m.promote_gate,
        }
        for m in p.metrics
    }
    s = p.segments
    return {
        "alpha": p.alpha,
        "metrics": metrics,
        "promote": {
            "enabled": p.promote.enabled,
            "min_duration_s": p.promote.min_duration_s,
            "min_conversations": p.promote.min_conversations,
            "alpha": p.promote.alpha,
        },
        "segments": {
            "enabled": s.enabled,
            "keys": list(s.keys),
            "max_keys": s.max_keys,
            "max_values_per_key": s.max_values_per_key,
            "min_conversations": s.min_conversations,
            "budget_share": s.budget_share,
        },
        "srm": {
            "enabled": p.srm.enabled,
            "alpha": p.srm.alpha,
            "min_conversations": p.srm.min_conversations,
            "grace_s": p.srm.grace_s,
        },
        "changepoint": {
            "enabled": p.changepoint.enabled,
            "epoch_s": p.changepoint.epoch_s,
            "restart_share": p.changepoint.restart_share,
            "span_epochs": p.changepoint.span_epochs,
        },
    }


def _catalogue_defaults() -> dict[str, dict[str, Any]]:
    """The bundled policy's metrics, as a policy file would write them: one per catalogue entry."""
    return {
        m.name: {
            "direction": m.direction.value,
            "tolerance": m.tolerance,
            "promote_tolerance": m.promote_tolerance,
            "tolerance_mode": m.tolerance_mode.value,
            "critical": m.critical,
            "min_samples": m.min_samples,
            "on_regression": m.on_regression,
        }
        for m in CATALOGUE
    }


def policy_from_doc(doc: dict[str, Any]) -> Policy:
    """A ``policy_to_doc`` dict back to a Policy, validated as a file would be (``ConfigError``)."""
    return _policy(doc, "policy")


def layout_change(old: Policy, new: Policy) -> str | None:
    """What ``new`` would measure differently from ``old`` (None: nothing, only thresholds differ).

    A judge's statistics are laid out by its enabled metrics (fields and per-conversation bits, in
    order), its segment slices and its change-point epochs; thresholds, tolerances, alpha, actions,
    minimum samples and the promotion and sample-ratio rules are read at each look. So a judge can
    take a new policy in its stride only when this returns None (``Engine.replace_policies``).
    """
    diffs = []
    before, after = [m.name for m in old.enabled_metrics()], [m.name for m in new.enabled_metrics()]
    if before != after:
        diffs.append(f"enabled metrics {', '.join(before) or 'none'} -> {', '.join(after) or 'none'}")
    seg = ("enabled", "keys", "max_keys", "max_values_per_key")
    for name in seg:
        a, b = getattr(old.segments, name), getattr(new.segments, name)
        if a != b:
            diffs.append(f"segments.{name} {a!r} -> {b!r}")
    for name in ("enabled", "epoch_s", "restart_share", "span_epochs"):
        a, b = getattr(old.changepoint, name), getattr(new.changepoint, name)
        if a != b:
            diffs.append(f"changepoint.{name} {a!r} -> {b!r}")
    if not diffs:
        return None
    return "the new policy changes what its judge measures (" + "; ".join(diffs) + ")"


def _read(path: Path) -> _PolicyFile:
    raw = read_yaml(path, "policy") or {}
    if not isinstance(raw, dict):
        raise ConfigError("policy", f"{path} must hold a mapping at the top level")
    return convert(raw, _PolicyFile)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _layer(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged on top of ``base``; a metric whose ``tolerance`` the layer sets without a
    ``promote_tolerance`` uses that tolerance for both (as before the field existed), so a file
    written for one margin keeps its meaning instead of inheriting the bundled promote margin."""
    out = _merge(base, over)
    metrics = over.get("metrics")
    if isinstance(metrics, dict) and isinstance(out.get("metrics"), dict):
        for name, m in metrics.items():
            merged = out["metrics"].get(name)
            if (
                isinstance(m, dict)
                and "tolerance" in m
                and "promote_tolerance" not in m
                and isinstance(merged, dict)
            ):
                out["metrics"][name] = {k: v for k, v in merged.items() if k != "promote_tolerance"}
    return out


def _policy(raw: dict[str, Any], where: str) -> Policy:
    doc = convert(raw, _PolicyDoc, where)
    metrics = tuple(_metric(str(name), m, f"{where}.metrics.{name}") for name, m in doc.metrics.items())
    # a segment key named explicitly is always judged, however few keys ``max_keys`` allows
    segments = msgspec.structs.replace(
        doc.segments, max_keys=max(doc.segments.max_keys, len(doc.segments.keys))
    )
    return Policy(doc.alpha, metrics, doc.promote, segments, doc.srm, doc.changepoint)


def _metric(name: str, raw: Any, where: str) -> MetricPolicy:
    try:
        known = metric_def(name)
    except KeyError:
        raise ConfigError(where, f"unknown metric ({', '.join(metric_names())})") from None
    d = convert(raw, _MetricDoc, where)
    direction = d.direction or known.direction
    mode_default = known.tolerance_mode
    mode = d.tolerance_mode or mode_default
    # The quality test works on the raw scale, every other test on ratios (log-latency, rate ratios).
    if mode is not mode_default:
        raise ConfigError(f"{where}.tolerance_mode", f"{name} supports only {mode_default.value} tolerances")
    # Either margin may be the wider one: a wider promote margin promotes sooner (a canary between
    # the two may be promoted or stopped, whichever is shown first); a narrower one promotes only
    # canaries shown to be closer to the control than the rollback margin.
    return MetricPolicy(
        name,
        direction,
        _tolerance(d.tolerance, f"{where}.tolerance", mode, direction),
        mode,
        d.critical,
        d.min_samples,
        Action(d.on_regression),
        d.enabled,
        d.promote_gate,
        None
        if d.promote_tolerance is None
        else _tolerance(d.promote_tolerance, f"{where}.promote_tolerance", mode, direction),
    )


def _tolerance(tol: float, field: str, mode: ToleranceMode, direction: Direction) -> float:
    """A margin on the harmful side of "no difference" (0 for differences, 1 for ratios)."""
    neutral = 0.0 if mode is ToleranceMode.ABSOLUTE else 1.0
    if mode is ToleranceMode.RELATIVE and tol <= 0:
        raise ConfigError(field, "a relative tolerance is a ratio > 0 (e.g. 1.25)")
    if (tol - neutral) * (1 if direction is Direction.HIGHER_IS_WORSE else -1) < 0:
        side = "above" if direction is Direction.HIGHER_IS_WORSE else "below"
        raise ConfigError(field, f"must be on the harmful side ({side} {neutral:g}) for {direction.value}")
    return float(tol)


# -- the pure decision ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PolicyState:
    action: Action = Action.CONTINUE  # latched: continue, pause, rollback, promote
    sequence: int = 0  # decisions emitted so far
    acknowledged: tuple[str, ...] = ()  # trigger keys a human let go ("metric@slice", "sample_ratio")
    trigger: str | None = None  # key of what latched the current action
    last_decision_id: str | None = None

    def to_state(self) -> dict[str, Any]:
        return {
            "v": 1,
            "action": self.action.value,
            "sequence": self.sequence,
            "acknowledged": list(self.acknowledged),
            "trigger": self.trigger,
            "last_decision_id": self.last_decision_id,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> PolicyState:
        return cls(
            Action(d["action"]),
            int(d["sequence"]),
            tuple(d["acknowledged"]),
            d.get("trigger"),
            d.get("last_decision_id"),
        )


TERMINAL = (Action.ROLLBACK, Action.PROMOTE)
SRM_KEY = "sample_ratio"


@dataclass(frozen=True, slots=True)
class Conduct:
    """How a rollout strategy's decisions read (each strategy registers its own,
    ``watcher.judges.strategies``); the default is the canary's.

    ``rollback_only``: every failure rolls back (a shadow serves no customer, there is nothing to
    pause). ``meanings``: per action, what it asks the deployer to do under the strategy, appended to
    the decision's reason ("[blue_green: switch traffic back to blue v41]").
    """

    rollback_only: bool = False
    meanings: Mapping[Action, Callable[[RolloutRef], str]] = field(default_factory=dict)

    def meaning(self, rollout: RolloutRef, action: Action) -> str:
        """What ``action`` asks the deployer to do ("" when the action says it all)."""
        explain = self.meanings.get(action)
        return explain(rollout) if explain is not None else ""


CANARY_CONDUCT = Conduct()


def _key(m: MetricEvidence) -> str:
    return f"{m.metric}@{m.slice}"


def _strength(m: MetricEvidence) -> float:
    return m.statistic / m.threshold if m.threshold > 0 else m.statistic


def decide(
    state: PolicyState,
    evidence: RolloutEvidence,
    policy: Policy,
    rollout: RolloutRef,
    conduct: Conduct = CANARY_CONDUCT,
) -> tuple[Decision | None, PolicyState]:
    """Evidence in, decision out; a Decision only when the latched action changes. ``conduct`` is
    the rollout's strategy's (``Strategy.conduct``)."""
    if state.action in TERMINAL:
        return None, state
    by_name = {m.name: m for m in policy.metrics}
    fails = [
        m
        for m in evidence.failing()
        if _key(m) not in state.acknowledged and m.metric in by_name and by_name[m.metric].enabled
    ]
    fails.sort(key=lambda m: (-_strength(m), m.metric, m.slice))
    rollbacks = [
        m for m in fails if by_name[m.metric].action is Action.ROLLBACK or m.critical or conduct.rollback_only
    ]
    if rollbacks:
        return _emit(
            state, evidence, rollout, conduct, Action.ROLLBACK, Cause.REGRESSION, rollbacks[0], fails
        )
    if state.action is Action.PAUSE:
        return None, state
    if fails:
        return _emit(state, evidence, rollout, conduct, Action.PAUSE, Cause.REGRESSION, fails[0], fails)
    srm = evidence.sample_ratio
    if srm is not None and srm.mismatch and SRM_KEY not in state.acknowledged:
        return _emit(state, evidence, rollout, conduct, Action.PAUSE, Cause.SAMPLE_RATIO_MISMATCH, None, [])
    if _promotable(evidence, policy):
        return _emit(state, evidence, rollout, conduct, Action.PROMOTE, Cause.NON_INFERIOR, None, [])
    return None, state


def _promotable(ev: RolloutEvidence, policy: Policy) -> bool:
    rule = policy.promote
    if not rule.enabled or ev.elapsed_s < rule.min_duration_s:
        return False
    if min(ev.conversations_control, ev.conversations_treatment) < rule.min_conversations:
        return False
    if ev.sample_ratio is not None and ev.sample_ratio.mismatch:
        return False
    overall = {m.metric: m for m in ev.metrics if m.slice == "all"}
    gates = [m for m in policy.enabled_metrics() if m.promote_gate]
    return bool(gates) and all(g.name in overall and overall[g.name].verdict is Verdict.PASS for g in gates)


def _emit(
    state: PolicyState,
    ev: RolloutEvidence,
    rollout: RolloutRef,
    conduct: Conduct,
    action: Action,
    cause: Cause,
    trigger: MetricEvidence | None,
    fails: list[MetricEvidence],
) -> tuple[Decision, PolicyState]:
    seq = state.sequence + 1
    did = decision_id(rollout.rollout_id, seq, action)
    if trigger is not None:
        more = f"; {len(fails) - 1} more failing" if len(fails) > 1 else ""
        reason = f"{action.value}: {trigger.reason}{more}"
        rows = tuple([trigger] + [m for m in fails if m is not trigger])
        trig: dict[str, str] | None = {"metric": trigger.metric, "slice": trigger.slice}
        key: str | None = _key(trigger)
    elif cause is Cause.SAMPLE_RATIO_MISMATCH:
        assert ev.sample_ratio is not None
        reason = f"pause: {ev.sample_ratio.reason}"
        rows, trig, key = (), {"metric": "sample_ratio", "slice": "all"}, SRM_KEY
    else:
        overall = tuple(m for m in ev.metrics if m.slice == "all")
        reason = (
            f"promote: all {sum(m.verdict is Verdict.PASS for m in overall)} guardrails non-inferior after "
            f"{ev.elapsed_s / 60:.0f} min, canary n={ev.conversations_treatment} vs baseline "
            f"n={ev.conversations_control} conversations"
        )
        rows, trig, key = overall, None, None
    meaning = conduct.meaning(rollout, action)
    if meaning:
        reason = f"{reason} [{rollout.strategy}: {meaning}]"
    decision = Decision(
        did, ev.ts, rollout, action, cause, reason, rows, ev.sample_ratio, trig, "watcher", seq
    )
    return decision, replace(state, action=action, sequence=seq, trigger=key, last_decision_id=did)


def override(
    state: PolicyState, action: Action, actor: str, reason: str, ts: float, rollout: RolloutRef
) -> tuple[Decision, PolicyState]:
    """A human decides; allowed in any state (also after rollback or promote)."""
    if action is Action.CONTINUE:
        action = Action.RESUME
    seq = state.sequence + 1
    did = decision_id(rollout.rollout_id, seq, action)
    text = f"{action.value} by {actor} (override)" + (f": {reason}" if reason else "")
    latched = Action.CONTINUE if action is Action.RESUME else action
    acked = state.acknowledged
    if action is Action.RESUME and state.trigger and state.trigger not in acked:
        acked = (*acked, state.trigger)
    decision = Decision(did, ts, rollout, action, Cause.OVERRIDE, text, actor=actor, sequence=seq)
    return decision, PolicyState(
        latched, seq, acked, "override" if latched is not Action.CONTINUE else None, did
    )


def acknowledge(
    state: PolicyState, actor: str, reason: str, ts: float, rollout: RolloutRef
) -> tuple[Decision | None, PolicyState]:
    """Resume after a pause; the cause that paused it will not pause this rollout again."""
    if state.action is not Action.PAUSE:
        return None, state
    seq = state.sequence + 1
    did = decision_id(rollout.rollout_id, seq, Action.RESUME)
    what = state.trigger or "pause"
    text = f"resume: {actor} acknowledged {what}" + (f": {reason}" if reason else "")
    acked = (
        state.acknowledged
        if state.trigger in (None, *state.acknowledged)
        else (*state.acknowledged, state.trigger)
    )
    decision = Decision(did, ts, rollout, Action.RESUME, Cause.ACKNOWLEDGED, text, actor=actor, sequence=seq)
    return decision, PolicyState(Action.CONTINUE, seq, tuple(a for a in acked if a), None, did)
