"""Fast start-up (issue #13): the commands that judge nothing do not import the heavy libraries
(river and scipy.stats take seconds, pandas and aiohttp about one each on this kind of machine);
the engine imports them when first needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("river", "scipy.stats", "scipy.special", "pandas", "aiohttp")
CODE = f"""
import contextlib, io, sys
from watcher.__main__ import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["--help"], ["check-config"], ["simulate", "--help"]])
def test_commands_that_judge_nothing_import_no_heavy_library(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE, *argv], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
