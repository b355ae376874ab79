"""What each rollout's judge can use of the traffic it receives, and why it is not judged when it is not.

A rollout that receives turns it cannot use, or has nothing to compare with, says so: the reason is
in ``GET /v1/rollouts/{id}`` (``coverage``), in ``watcher_rollouts_unjudged{reason}`` (a dashboard
row and an alert), and in a log line when the reason appears or changes; never silence.

Per rollout the engine counts, since the rollout started, the turns of its agent and environment
that its judge used as treatment or control and the others, by why they were not used (``Unused``).
A problem (``Unjudged``) is declared once there is enough traffic to say (``_ENOUGH`` turns).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

__all__ = ["Coverage", "Unjudged", "Unused", "roles"]

_ENOUGH = 200  # turns of the rollout's agent before watcher says it cannot judge them
_MIN_TREATMENT = 20  # treatment turns before a missing control is a problem


class Unused(str, Enum):
    """Why a turn of a rollout's agent was not used by its judge (closed vocabulary, a label)."""

    OTHER_VERSION = "other_version"  # neither the control's nor the treatment's version
    UNUSABLE_ARM = "unusable_arm"  # an arm the strategy does not compare (shadow turns in a canary, ...)
    NO_FLAG = "no_flag"  # a flag rollout: the turn has no variant of the flag, or another version
    OLD_VERSION = (
        "old_version"  # blue-green: the old version's turns after the switch (its history is the reference)
    )


class Unjudged(str, Enum):
    """Why a rollout is not judged (closed vocabulary, a label)."""

    NO_TREATMENT = "no_treatment"  # turns arrive, none is the treatment's
    NO_CONTROL = "no_control"  # treatment turns, no control turns to compare them with
    NO_REFERENCE = "no_reference"  # blue-green: no history of the old version before the switch
    UNUSED_TURNS = "unused_turns"  # most of the rollout's traffic is of a kind its judge cannot use


_UNUSED_BY_ARM = {"live": Unused.OTHER_VERSION, "other": Unused.NO_FLAG}


def roles(
    arms: Sequence[str], treatment_arm: str, control_arms: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(treatment mask, control mask, the arms of the other turns) of the turns a judge receives;
    the arms are the strategy's (``Strategy.treatment_arm``, ``Strategy.control_arms``)."""
    a = np.asarray(arms, dtype=object)
    treat = a == treatment_arm
    ctrl = np.isin(a, control_arms)
    rest = a[~(treat | ctrl)].tolist()
    return treat, ctrl, rest


@dataclass
class Coverage:
    """One rollout's counts since it started, and its problem, if any."""

    # the strategy's control arms; none: its judge compares with the old version's history before the
    # switch (blue-green), so the old version's ("baseline") turns are not a missing control
    control_arms: tuple[str, ...]
    treatment: int = 0
    control: int = 0
    unused: Counter[str] = field(default_factory=Counter)
    problem: Unjudged | None = None
    detail: str = ""

    def add(self, treatment: int, control: int, rest: list[str]) -> None:
        self.treatment += treatment
        self.control += control
        for arm, n in Counter(rest).items():
            reason = _UNUSED_BY_ARM.get(arm, Unused.UNUSABLE_ARM)
            if not self.control_arms and arm == "baseline":
                reason = Unused.OLD_VERSION
            self.unused[reason.value] += n

    def assess(self, reference: str | None = None) -> tuple[Unjudged | None, str]:
        """The problem now (and its text); ``reference``: a blue-green judge's reference mode."""
        total = self.treatment + self.control + sum(self.unused.values())
        unused = ", ".join(f"{n} {r}" for r, n in sorted(self.unused.items())) or "none"
        if reference == "none":
            return Unjudged.NO_REFERENCE, "no history of the old version before the switch to compare with"
        if total < _ENOUGH:
            return None, ""
        if self.treatment == 0:
            return Unjudged.NO_TREATMENT, f"{total} turns, none of the treatment (unused: {unused})"
        if self.control_arms and self.control == 0 and self.treatment >= _MIN_TREATMENT:
            return Unjudged.NO_CONTROL, f"{self.treatment} treatment turns, no control turn to compare with"
        if 2 * sum(self.unused.values()) > total:
            return Unjudged.UNUSED_TURNS, f"most turns cannot be used: {unused} of {total}"
        return None, ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "treatment_turns": self.treatment,
            "control_turns": self.control,
            "unused_turns": dict(self.unused),
            "problem": self.problem.value if self.problem else None,
            "detail": self.detail or None,
        }
