"""Writes prometheusrule.yaml: alerts/watcher.rules.yml as a prometheus-operator PrometheusRule.

    python deploy/kubernetes/monitoring/render_rules.py      # after a change to alerts/watcher.rules.yml

tests/ops/test_deploy_manifests.py fails while the two differ.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[2] / "alerts" / "watcher.rules.yml"
HEADER = """\
# Generated from alerts/watcher.rules.yml by deploy/kubernetes/monitoring/render_rules.py: edit the rules there.
# prometheus-operator loads it when the Prometheus' ruleSelector matches its labels.
"""


def prometheus_rule() -> dict:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "watcher", "labels": {"app.kubernetes.io/name": "watcher"}},
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the expressions, the descriptions) as ``|`` blocks, as written by hand."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def render() -> str:
    return HEADER + yaml.dump(prometheus_rule(), Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)


if __name__ == "__main__":
    (HERE / "prometheusrule.yaml").write_text(render())
