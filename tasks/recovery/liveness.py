"""Worker liveness, from each worker's main process: the node's heartbeat, and recovery at start.

- Before the pool forks, the main process registers its incarnation (results.models.WorkerNode);
  the pool children inherit its id (tasks.runtime.node) and every claim records it on the job.
- Once ready, it recovers the jobs still ``running`` under an earlier incarnation of its hostname:
  a node that starts again knows they died with it (Sidekiq Pro's super_fetch case), so they run
  again within seconds of the restart instead of waiting for a time limit.
- A thread of the main process records the node as seen every TERMINUS_WORKER_HEARTBEAT seconds,
  whatever the pool children are doing; a node silent for TERMINUS_WORKER_DEAD_AFTER is dead and
  the repair pass recovers its jobs (tasks.recovery.repairs.recover_dead_nodes).
- The same thread runs the repair pass (tasks.recovery.repairs) every TERMINUS_REPAIR_INTERVAL
  seconds, on one node at a time (results.models.RepairLease): while any worker is alive, the jobs
  of a dead one are repaired, whether or not beat and the ``crons`` worker are.
- A warm shutdown records the incarnation as stopped, after the pool finished its jobs.

The signal handlers connect when this module is imported (tasks.apps imports it in every process;
only a worker sends these signals).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown
from django.conf import settings
from django.db import DatabaseError, connection

from results.models import REPAIR_PASS, RepairLease, WorkerNode
from tasks.recovery.repairs import NODE_RESTARTED, Pass, recover_jobs_of_node, repair_pass
from tasks.runtime.durable import durable
from tasks.runtime.node import current_node, set_current_node

logger = logging.getLogger(__name__)


def _boot_id() -> str:
    """The host's boot id (Linux), so an operator can tell a process restart from a host reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:64]
    except OSError:
        return ""


class NodeHeartbeat(threading.Thread):
    """Records the node as seen every TERMINUS_WORKER_HEARTBEAT seconds, and takes its turn at the
    repair pass, until stopped."""

    def __init__(self, node: WorkerNode) -> None:
        super().__init__(name="terminus-node-heartbeat", daemon=True)
        self.node = node
        self.stopping = threading.Event()

    def run(self) -> None:
        interval = settings.TERMINUS_REPAIR_INTERVAL
        next_beat = time.monotonic() + settings.TERMINUS_WORKER_HEARTBEAT
        # Each node asks for the lease three times per interval: a pass is due at most a third late.
        next_repair = time.monotonic() if interval else float("inf")
        try:
            while not self.stopping.wait(max(0.0, min(next_beat, next_repair) - time.monotonic())):
                if time.monotonic() >= next_beat:
                    self.beat()
                    next_beat = time.monotonic() + settings.TERMINUS_WORKER_HEARTBEAT
                if time.monotonic() >= next_repair:
                    self.repair()
                    next_repair = time.monotonic() + interval / 3
        finally:
            connection.close()

    def repair(self) -> None:
        """One repair pass if this node's turn has come (it took the lease).

        The node proves itself alive first: after a database outage its own last beat is old, and a
        pass that found it dead would take away the jobs it is still running.
        """
        if not self.beat():
            return
        try:
            if not RepairLease.take(REPAIR_PASS, holder=self.node.pk, hold_for=settings.TERMINUS_REPAIR_LEASE):
                return
            this = Pass()
            counts = repair_pass(this)
            RepairLease.complete(
                REPAIR_PASS, holder=self.node.pk, due_in=settings.TERMINUS_REPAIR_INTERVAL, counts=counts
            )
            if any(counts.values()) or this.errors:
                logger.warning("repair pass: %s; errors: %s", counts, this.errors[:10] or "none")
        except Exception:  # the loop must outlive any one pass; the lease frees itself (held_until)
            logger.exception("repair pass failed")
            connection.close()

    def beat(self) -> bool:
        """Record the node as seen now; False if the database could not be reached."""
        try:
            if not self.node.beat():
                # Declared dead while it was paused: its jobs were given to other attempts, whose
                # records refuse this node's late writes. It is alive again for the jobs it claims next
                # (its row is written again if it was deleted meanwhile).
                revived = WorkerNode.objects.filter(pk=self.node.pk).update(stopped_at=None)
                if not revived:
                    self.node.stopped_at = None
                    self.node.save(force_insert=True)
                self.node.beat()
                logger.error("worker node %s was presumed dead (paused?); its lost jobs ran elsewhere", self.node)
        except DatabaseError:
            logger.warning("worker node heartbeat not recorded (database unavailable)", exc_info=True)
            connection.close()
            return False
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=settings.TERMINUS_WORKER_HEARTBEAT + 5)


_heartbeat: NodeHeartbeat | None = None


@worker_init.connect
def _register_node(sender: Any = None, **_: Any) -> None:
    """Before the pool forks: this incarnation's row, and its id for the children's claims."""
    hostname = getattr(sender, "hostname", None) or f"worker-{os.getpid()}"
    node = durable(
        lambda: WorkerNode.register(hostname=hostname, pid=os.getpid(), boot_id=_boot_id()),
        what=f"the start of worker node {hostname}",
    )
    set_current_node(node.pk)
    connection.close()  # the pool children must not share this connection
    logger.info("worker node %s registered as incarnation %s", hostname, node.pk)


@worker_ready.connect
def _recover_and_beat(sender: Any = None, **_: Any) -> None:
    """Recover the jobs of this hostname's earlier incarnations, then start the node's heartbeat."""
    global _heartbeat
    node_id = current_node()
    if node_id is None:
        return
    node = WorkerNode.objects.get(pk=node_id)
    recover_earlier_incarnations(node)
    _heartbeat = NodeHeartbeat(node)
    _heartbeat.start()


def recover_earlier_incarnations(node: WorkerNode) -> dict[str, int]:
    """Jobs running under an earlier incarnation of ``node``'s hostname died with it: lost now."""
    earlier = list(
        WorkerNode.earlier_incarnations(hostname=node.hostname, current=node.pk).values_list("pk", flat=True)
    )
    if not earlier:
        return {"requeued": 0, "failed": 0}
    this = Pass()
    counts = recover_jobs_of_node(this, earlier, why=NODE_RESTARTED)
    WorkerNode.objects.filter(pk__in=earlier, stopped_at__isnull=True).update(stopped_at=node.started_at)
    logger.warning(
        "worker node %s started again: %s jobs of its earlier incarnations run again, %s failed (no attempts left)",
        node.hostname,
        counts["requeued"],
        counts["failed"],
    )
    return counts


@worker_shutdown.connect
def _mark_stopped(**_: Any) -> None:
    """After the pool finished (warm shutdown): this incarnation is gone; anything it left running is lost."""
    node_id = current_node()
    if node_id is None:
        return
    if _heartbeat is not None:
        _heartbeat.stop()
    try:
        WorkerNode(pk=node_id).stop()
    except DatabaseError:  # the repair pass sees the node silent instead, TERMINUS_WORKER_DEAD_AFTER later
        logger.warning("worker node %s: its stop was not recorded (database unavailable)", node_id, exc_info=True)
