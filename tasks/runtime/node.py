"""Which worker incarnation this process belongs to (results.models.WorkerNode).

The worker's main process registers its incarnation before the pool forks (tasks.recovery.liveness);
its pool children inherit the id, and every claim records it on the job, so the repair loop knows
whose jobs to recover when the node dies, and the main process can fence the writes it makes about
a job (a hard time limit) by it. Outside a worker (web, beat, tests calling tasks eagerly) it is None.
"""

from __future__ import annotations

import uuid

_current: uuid.UUID | None = None


def current_node() -> uuid.UUID | None:
    """This process's worker incarnation, or None outside a worker."""
    return _current


def set_current_node(node_id: uuid.UUID | None) -> None:
    """Set by the worker's main process when it registers (before the pool forks)."""
    global _current
    _current = node_id
