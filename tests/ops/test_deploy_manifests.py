"""deploy/kubernetes: what can be checked without a cluster. The configuration the manifest mounts
and the environment it sets load into valid settings for scale-out; the probes hit real endpoints;
the rollout strategy replaces one pod at a time, the old one only once the new one is ready."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from watcher.cli.main import build_parser
from watcher.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kubernetes" / "watcher.yaml"


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
