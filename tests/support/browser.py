"""A real headless browser for pages watcher writes (the HTML reports).

Chromium missing: skipped locally, a failure under ``CI`` (.ci/run installs Debian's ``chromium``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["dom"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it")
    pytest.skip(message)


def dom(html_file: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran, in a headless Chromium with no network at all."""
    out = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--proxy-server=127.0.0.1:9",  # nothing answers there: the page must not need the network
            "--virtual-time-budget=15000",
            "--dump-dom",
            html_file.as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    return out.stdout.decode()
