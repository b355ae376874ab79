"""A decision names the treatment's worst conversations behind its trigger, linked to their traces."""

from __future__ import annotations

from urllib.parse import quote

import msgspec

from watcher.config import load_settings
from watcher.engine import Engine
from watcher.sim.presets import PRESETS
from watcher.sim.traffic import generate

LINK = "https://grafana.example/explore?left=%7B%22query%22:%22{{span.gen_ai.conversation.id=\\%22{conversation_id}\\%22}}%22%7D"


def test_a_rollback_links_the_worst_conversations_of_the_failing_slice() -> None:
    settings = load_settings(environ={"WATCHER_JUDGE__TRACE_LINK": LINK, "WATCHER_JUDGE__EXAMPLES": "3"})
    engine = Engine(settings)
    raws = list(generate(PRESETS["demo"]))  # a quality regression in intent=billing
    decisions = [d for i in range(0, len(raws), 2000) for d in engine.process(raws[i : i + 2000]).decisions]
    rollback = next(d for d in decisions if d.action.value == "rollback")
    assert rollback.trigger == {"metric": "quality", "slice": "intent=billing"}
    assert len(rollback.examples) == 3
    values = [x.value for x in rollback.examples]
    assert values == sorted(values) and values[-1] < 0.6  # the worst first, all well below the baseline's
    canary = rollback.rollout.canary_version
    seen: dict[
        str, tuple[str, str | None]
    ] = {}  # conversation -> (version, intent) of its turns in the stream
    for raw in raws:
        t = msgspec.json.decode(raw)
        if t.get("conversation_id") in {x.conversation_id for x in rollback.examples}:
            seen[t["conversation_id"]] = (t["version"], t["segment"].get("intent"))
    assert set(seen.values()) == {(canary, "billing")}
    for x in rollback.examples:
        assert x.url == LINK.format(conversation_id=quote(x.conversation_id, safe=""))
    assert rollback.to_dict()["examples"][0]["url"] == rollback.examples[0].url
