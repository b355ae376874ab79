"""The sink registry (watcher.sinks.registry): built-in types, a third-party type installed through
the ``watcher.sinks`` entry point group (a real distribution on sys.path, found by importlib.metadata),
imported only when an entry asks for it, and the errors of an unknown type or a broken plug-in."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.config import load_settings
from watcher.errors import ConfigError
from watcher.sinks import ENTRY_POINT_GROUP, build_sinks, find_type, known_types, registry, sink_settings
from watcher.sinks.registry import BUILTIN

PLUGIN = """
from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from watcher.config import SECRET
from watcher.sinks import SinkContext, SinkSettings, SinkType
from watcher.sinks.base import FilteredSink, Request, Sent


class TeamsSettings(SinkSettings, tag="teams", frozen=True, kw_only=True):
    url: str
    token: Annotated[Annotated[str, Meta(min_length=8)], SECRET]


class TeamsSink(FilteredSink[TeamsSettings]):
    def __init__(self, settings: TeamsSettings, clock) -> None:
        super().__init__(settings)
        self.clock = clock

    def render(self, item, state=None):
        return [Request(kind="card", url=self.settings.url, body=item.record)]

    async def send(self, request):
        return Sent(status=200)


TEAMS = SinkType(TeamsSettings, lambda settings, ctx: TeamsSink(settings, ctx.clock))
NOT_A_TYPE = 42
WRONG_TAG = SinkType(TeamsSettings, lambda settings, ctx: None)
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed distribution with three entry points: a good one, one that names no SinkType and
    one whose settings carry another type's tag."""
    module = f"watcher_teams_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(PLUGIN)
    dist = tmp_path / "watcher_teams-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: watcher-teams\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [{ENTRY_POINT_GROUP}]
            teams = {module}:TEAMS
            broken = {module}:NOT_A_TYPE
            mislabelled = {module}:WRONG_TAG
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_plugins", {})  # plug-ins loaded by another test are not this one's
    yield module
    sys.modules.pop(module, None)


def test_the_builtin_types_are_one_registration_each() -> None:
    assert list(BUILTIN) == ["kafka", "webhook", "slack", "pagerduty", "grafana", "otel"]
    for name, sink_type in BUILTIN.items():
        assert sink_type.name == name and find_type(name) is sink_type
        assert sink_type.settings.__struct_config__.tag == name


def test_a_plugin_type_is_found_by_its_entry_point_and_imported_only_when_asked_for(plugin: str) -> None:
    assert known_types()[: len(BUILTIN)] == list(BUILTIN)
    assert {"teams", "broken", "mislabelled"} <= set(known_types())
    assert plugin not in sys.modules  # listing the types imports nothing

    settings = load_settings(
        environ={},
        overrides={
            "sinks": [{"name": "chat", "type": "teams", "url": "https://teams", "token": "t0k3n-123"}]
        },
    )
    assert plugin not in sys.modules  # the configuration keeps the entry as written
    (sink,) = build_sinks(settings.sinks)
    assert plugin in sys.modules and type(sink).__name__ == "TeamsSink" and sink.name == "chat"
    (typed,) = sink_settings(settings.sinks)
    assert settings.masked([typed])["sinks"][0] == {
        "type": "teams",
        "name": "chat",
        "agents": [],
        "environments": [],
        "min_severity": "info",
        "kinds": [],
        "timeout_s": 10.0,
        "retry_for_s": 259200.0,
        "url": "https://teams",
        "token": "********",  # the plug-in's own secret is masked
    }
    with pytest.raises(ConfigError) as err:  # the plug-in's own settings are validated like a built-in's
        sink_settings([{"name": "chat", "type": "teams", "url": "https://teams", "token": "short"}])
    assert err.value.field == "sinks[chat].token" and "short" not in str(err.value)


def test_an_unknown_type_lists_builtin_and_installed_types(plugin: str) -> None:
    with pytest.raises(ConfigError) as err:
        sink_settings([{"name": "x", "type": "carrier-pigeon"}])
    assert err.value.field == "sinks[x].type"
    assert "known: kafka, webhook, slack, pagerduty, grafana, otel, broken, mislabelled, teams" in str(
        err.value
    )


@pytest.mark.parametrize("kind", ["broken", "mislabelled"])
def test_a_plugin_that_names_no_matching_sink_type_is_a_clear_error(plugin: str, kind: str) -> None:
    with pytest.raises(
        ConfigError, match=f"{plugin}:.*must name a SinkType whose settings are tagged '{kind}'"
    ):
        sink_settings([{"name": "x", "type": kind}])


def test_a_plugin_cannot_replace_a_builtin_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "evil-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: evil\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nwebhook = nowhere:NOTHING\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_type("webhook") is BUILTIN["webhook"]
    assert known_types().count("webhook") == 1
