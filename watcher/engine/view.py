"""What the readers of the engine see: one ``Engine``, or the partition tasks' view across theirs.

The HTTP API, the deployer hooks, the Prometheus exposition and the demo's table read rollouts,
series and verdicts, and apply markers and overrides; with ``checkpoint.scope: partition`` the state
is split over one engine per partition and ``Tasks`` answers the same questions across them. These
protocols are those questions, so a reader declares what it needs instead of taking an ``Engine``
and being handed a ``Tasks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence

    from watcher.contract import Action, Decision, Deployment, RolloutEvidence
    from watcher.engine.coverage import Coverage
    from watcher.engine.history import RolloutHistory
    from watcher.judges import PolicyState
    from watcher.state import Change, Rollout, SeriesKey, SeriesSnapshot, Window

__all__ = ["EngineView", "RolloutsView", "SeriesView"]


class RolloutsView(Protocol):
    def all(self) -> list[Rollout]: ...

    def get(self, rollout_id: str, /) -> Rollout | None: ...

    def active(self, agent_id: str, environment: str, /) -> Rollout | None: ...

    def gates(self, agent_id: str, version: str | None, /) -> list[dict[str, Any]]: ...

    @property
    def marker_times(self) -> dict[tuple[str, str, str, str], float]: ...


class SeriesView(Protocol):
    @property
    def watermark(self) -> float | None: ...

    def keys(self) -> list[SeriesKey]: ...

    def snapshot(self, key: SeriesKey, window: Window = "cumulative", /) -> SeriesSnapshot: ...

    def traffic_share(
        self, agent_id: str, environment: str, window: Window = "cumulative", /
    ) -> dict[tuple[str, str], float]: ...

    def take_dirty(self) -> set[tuple[str, str]]: ...


class EngineView(Protocol):
    @property
    def registry(self) -> RolloutsView: ...

    @property
    def state(self) -> SeriesView: ...

    @property
    def evidence(self) -> Mapping[str, RolloutEvidence]: ...

    @property
    def coverage(self) -> Mapping[str, Coverage]: ...

    def histories(self, rollout_ids: Sequence[str] | None = None, /) -> list[RolloutHistory]: ...

    @property
    def last_action(self) -> Mapping[str, Action]: ...

    @property
    def policy_states(self) -> Mapping[str, PolicyState]: ...

    @property
    def judges(self) -> Mapping[str, Any]: ...

    def apply_marker(self, marker: Deployment, /) -> Change | None: ...

    def record_override(self, rollout_id: str, decision: Decision, state: PolicyState, /) -> None: ...
