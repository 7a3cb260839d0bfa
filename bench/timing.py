"""Timing shared by the benches: the fastest of several runs (this machine's speed drifts by 20-30 % over minutes)."""

from __future__ import annotations

import time
from collections.abc import Callable


def fastest(fn: Callable[[], object], repeats: int, warm_up: bool = False) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``; ``warm_up`` calls it once first, untimed (first-call
    allocations, onnxruntime's graph preparation)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
