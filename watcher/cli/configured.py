"""The settings a command runs with: the ``--config`` file (or ``$WATCHER_CONFIG``), the
``WATCHER_*`` variables and the command's own overrides (``--bootstrap-servers``, ``--http-port``,
``--policy``), in that order of precedence."""

from __future__ import annotations

import argparse
import os
from typing import Any

from watcher.config import Settings, load_settings

__all__ = ["config_file", "overrides", "settings"]


def config_file(args: argparse.Namespace) -> str | None:
    return getattr(args, "config", None) or os.environ.get("WATCHER_CONFIG") or None


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line sets (read again with the file on SIGHUP)."""
    out: dict[str, Any] = {}
    if getattr(args, "bootstrap_servers", None) is not None:  # "" is a mistake, not "unset"
        out["kafka.bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "http_port", None) is not None:
        out["http.port"] = args.http_port
    if getattr(args, "policy", None):
        out["judge.policy_file"] = args.policy
    return out


def settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_file(args), overrides=overrides(args))
