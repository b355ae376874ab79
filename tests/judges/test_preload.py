"""The daemon imports the judges' heavy libraries in a worker thread as it starts (``preload``), so
that the first batch does not import them on the event loop. A new lazy import of river or scipy in
the judging path must be in ``HEAVY`` too, or the first batch that needs it holds the loop."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import watcher
from watcher.judges.preload import HEAVY

ROOT = Path(watcher.__file__).parent
JUDGING = ("judges", "stats", "state", "engine")  # what a batch runs through
LAZY = re.compile(r"^\s+(?:from|import) ((?:river|scipy)[\w.]*)", re.M)


def test_every_lazy_heavy_import_of_the_judging_path_is_preloaded() -> None:
    found = {
        m.group(1)
        for package in JUDGING
        for path in (ROOT / package).rglob("*.py")
        for m in LAZY.finditer(path.read_text())
    }
    assert found, "the pattern finds the lazy imports"
    assert {name for name in found if not any(name.startswith(h) for h in HEAVY)} == set()


def test_preload_imports_them() -> None:
    code = "import sys; from watcher.judges import preload; preload(); print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in HEAVY:
        assert f"'{name}'" in out
