"""``python -m watcher`` is the ``watcher`` command."""

from __future__ import annotations

import sys

from watcher.cli import main

sys.exit(main())
