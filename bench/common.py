"""Names and small helpers shared by the runner and the bench workers (no Django imports here)."""

from __future__ import annotations

#: Redis keys (in the bench's own Redis database) written by the workers' postrun handler.
DONE_COUNTER = "bench:done:count"
DONE_LIST = "bench:done:list"

#: variant -> (task name, queue). Each variant has a queue of its own, so the runner can switch
#: one variant's consumer on while the others stay paused.
VARIANTS: dict[str, tuple[str, str]] = {
    "bare": ("bench.bare", "bench_bare"),
    "dcr": ("bench.dcr", "bench_dcr"),
    "dcr_nostarted": ("bench.dcr_nostarted", "bench_dcr_nostarted"),
    "terminus": ("bench.noop", "bench_tracked"),
}
TRACKED_QUEUE = VARIANTS["terminus"][1]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 200 samples is the 2nd largest)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]
