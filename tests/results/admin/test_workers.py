"""The worker nodes and repair lease admin pages: an operator sees which incarnations are alive, read-only."""

from __future__ import annotations

import pytest
from django.urls import reverse

from results.models import RepairLease, WorkerNode

pytestmark = pytest.mark.django_db


def test_staff_see_worker_nodes_and_the_repair_lease_but_cannot_change_them(admin_client):
    node = WorkerNode.register(hostname="celery@node-a", pid=77)
    WorkerNode.register(hostname="celery@node-b", pid=78).stop()
    RepairLease.take("repair", holder=node.pk, hold_for=60)
    RepairLease.complete("repair", holder=node.pk, due_in=15, counts={"dead_node_requeued": 2})

    page = admin_client.get(reverse("admin:results_workernode_changelist"))
    assert page.status_code == 200 and b"celery@node-a" in page.content and b"celery@node-b" in page.content
    running = admin_client.get(reverse("admin:results_workernode_changelist"), {"stopped_at__isempty": "1"})
    assert b"celery@node-a" in running.content and b"celery@node-b" not in running.content
    detail = admin_client.get(reverse("admin:results_repairlease_change", args=["repair"]))
    assert detail.status_code == 200 and b"dead_node_requeued" in detail.content
    refused = admin_client.post(reverse("admin:results_workernode_change", args=[node.pk]), {"pid": 1})
    assert refused.status_code == 403
    assert WorkerNode.objects.get(pk=node.pk).pid == 77
