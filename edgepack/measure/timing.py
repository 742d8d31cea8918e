"""The timing protocol shared by `edgepack bench` and the compiled latency in prune reports."""

from __future__ import annotations

import time
from typing import Callable

#: pause before each engine's turn: ONNX Runtime's and TVM's thread pools spin after a call, and the next
#: engine's threads would share the cores with them for a scheduler tick (~4 ms per call measured here)
SETTLE_S = 0.2
TURN_WARMUP = 3  # untimed calls at the start of each turn


def timed_rounds(calls: dict[str, Callable[[], object]], warmup: int, per_round: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of single calls: `warmup` calls each, then `rounds` turns in which every engine runs
    `per_round` timed calls, so drift of the machine hits all engines alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            time.sleep(SETTLE_S)
            for _ in range(TURN_WARMUP):
                call()
            for _ in range(per_round):
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1000.0)
    return times
