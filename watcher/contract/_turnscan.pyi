# The C scanner's interface (watcher/contract/_turnscan.c), for type checkers.
from typing import Any

from watcher.contract.columnar import ScanResult

def scan(raws: list[Any], max_bytes: int, /) -> ScanResult: ...
