"""Detection benchmark of the shadow, blue-green and flag judges (issue #7): ``python -m
bench.strategies``."""
