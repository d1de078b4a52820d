"""Worker remote-control commands: one inspect reply for ``fleet`` and ``/metrics``, and queue resume.

Registered with Celery's control registry when imported (tasks.apps imports it in every process,
so a worker answers them).
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import celeryd_after_setup
from celery.worker import state as worker_state
from celery.worker.control import control_command, inspect_command

#: The queues this worker was started with (-Q): ``fleet resume`` gives back only these.
_startup_queues: list[str] = []


@celeryd_after_setup.connect
def _remember_queues(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """Remember the queues this worker was started with."""
    queues = getattr(getattr(getattr(instance, "app", None), "amqp", None), "queues", None)
    if queues is not None:
        _startup_queues[:] = sorted(queues.consume_from or queues)


@inspect_command()
def terminus_fleet(state: Any, **_: Any) -> dict[str, Any]:
    """One reply with what ``fleet`` and /metrics need: queues, running and held jobs, pool size."""
    consumer = state.consumer
    task_consumer = getattr(consumer, "task_consumer", None)
    consuming = sorted(queue.name for queue in task_consumer.queues) if task_consumer else []

    def describe(request: Any) -> dict[str, Any]:
        return {
            "id": request.id,
            "type": request.name,
            "queue": (request.delivery_info or {}).get("routing_key") or "",
            "started": request.time_start,
            "eta": request.eta.isoformat() if getattr(request, "eta", None) else None,
        }

    active = list(worker_state.active_requests)
    active_ids = {request.id for request in active}
    reserved = [request for request in worker_state.reserved_requests if request.id not in active_ids]
    scheduled = []
    for waiting in consumer.timer.schedule.queue:
        args = getattr(waiting.entry, "args", None) or ()
        if args and hasattr(args[0], "delivery_info"):
            scheduled.append(args[0])
    pool = getattr(consumer, "pool", None)
    return {
        "configured": list(_startup_queues),
        "consuming": consuming,
        "concurrency": getattr(pool, "num_processes", None) or getattr(pool, "limit", None),
        "pid": os.getpid(),
        "active": [describe(request) for request in active],
        "reserved": [describe(request) for request in reserved],
        "scheduled": [describe(request) for request in scheduled],
    }


@control_command(args=[("queue", str)], signature="<queue>")
def terminus_resume_queue(state: Any, queue: str, **_: Any) -> dict[str, str]:
    """Consume ``queue`` again, but only on a worker started with it (never widen a worker's queues)."""
    if queue not in _startup_queues:
        return {"skipped": f"{queue} is not one of this worker's queues ({', '.join(_startup_queues)})"}
    state.consumer.call_soon(state.consumer.add_task_queue, queue)
    return {"ok": f"consuming from {queue}"}
