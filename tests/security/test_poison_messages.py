"""Messages a worker must never run or deserialize: refused, kept as a dead letter, the job untouched.

tests/tasks/failure/test_dead_letters.py proves it for a pickle body (whose unpickling would run code) and
for an unknown task name. Here every other hostile shape gets the same proof on the real broker
and a real worker: other content types (YAML, msgpack, plain text, untyped bytes), a JSON body
that is not JSON, and a well-formed JSON message with a task header no worker knows. Each one
names a real, queued job as its id, so "the task never ran" is checked on that job's record.

The messages go to a queue of this module's own, consumed by a dedicated worker: a message that
crashes a worker must not take the suite's shared worker down with it. The shared worker records
the dead letters (it consumes ``dead_letter``).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from kombu import Connection, Exchange, Producer, Queue

from results.models import DeadLetter, DeadLetterReason, Job, JobAttempt, Status
from tasks.submit.outbox import submit
from tests.helpers import ARTIFACTS, WorkerProcess, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = f"hostile-{uuid.uuid4().hex[:8]}"


class DrillWorker:
    """A worker on QUEUE only. A message that killed it is purged with the queue, and it starts again
    (the test that sent the message fails), so one crash does not become the next test's crash."""

    def __init__(self) -> None:
        self.process: WorkerProcess | None = None

    def ensure_running(self) -> WorkerProcess:
        if self.process is not None and not self.process.alive():
            self.process.stop()
            purge_queue()
        if self.process is None or not self.process.alive():
            self.process = WorkerProcess(queues=QUEUE, log_path=ARTIFACTS / f"{QUEUE}.log").start()
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15)


def hostile_queue() -> Queue:
    return Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)


def purge_queue() -> None:
    from project.celery import app

    with Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options) as conn:
        hostile_queue()(conn.default_channel).purge()


@pytest.fixture(scope="module")
def drill_worker(session_worker: WorkerProcess, django_db_blocker: Any) -> Iterator[DrillWorker]:
    drill = DrillWorker()
    with django_db_blocker.unblock():
        drill.ensure_running()
    yield drill
    drill.stop()


@pytest.fixture
def hostile_worker(drill_worker: DrillWorker, transactional_db: None) -> WorkerProcess:
    return drill_worker.ensure_running()


# The bytes of the YAML body would run a command if anyone loaded it with an unsafe loader.
YAML_EXPLOIT = b"!!python/object/apply:os.system ['touch {marker}']\n"

UNDECODABLE = [
    pytest.param("application/x-yaml", "utf-8", YAML_EXPLOIT, id="yaml"),
    pytest.param("application/x-msgpack", "binary", b"\x93\x90\x80\x80", id="msgpack"),
    pytest.param("text/plain", "utf-8", b"rm -rf / # not a task\n", id="text-plain"),
    pytest.param("application/octet-stream", "binary", b"\x00\xff\xfe garbage", id="octet-stream"),
    # kombu hands "application/data" and "application/text" bodies over undecoded, whatever
    # accept_content says: the worker must still refuse them.
    pytest.param("application/data", "binary", b"\x00\xff\xfe untyped bytes", id="untyped-data"),
    pytest.param("application/text", "utf-8", b"untyped text", id="untyped-text"),
    pytest.param("application/json", "utf-8", b'{"not": json at all', id="json-that-is-not-json"),
]


def publish(body: bytes, *, content_type: str, content_encoding: str, headers: dict[str, Any]) -> None:
    from project.celery import app

    queue = hostile_queue()
    with Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options) as conn:
        Producer(conn).publish(
            body,
            exchange=queue.exchange,
            routing_key=QUEUE,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            declare=[queue],
        )


def queued_job() -> Job:
    """A queued job whose own message was never published: only the hostile one names it."""
    now = timezone.now()
    return Job.objects.create(
        type="diagnostics.sleep", payload={"seconds": 0}, queue=QUEUE, terminal_by=now + timedelta(hours=1)
    )


def dead_letter(message_id: str, worker: WorkerProcess) -> DeadLetter:
    """The dead letter of ``message_id`` once recorded and alerted (the shared worker is then done
    with it); None at once if the message killed the worker, which the fixture then reports."""

    def recorded() -> DeadLetter | bool | None:
        if not worker.alive():
            return True
        return DeadLetter.objects.filter(message_key=message_id, alerted_at__isnull=False).first()

    letter = wait_for(recorded, timeout=40, what=f"dead letter {message_id}")
    assert isinstance(letter, DeadLetter), f"the worker died on message {message_id}:\n{worker.log()[-3000:]}"
    return letter


def assert_never_ran(job: Job, worker: WorkerProcess) -> None:
    assert worker.alive(), f"the message killed the worker:\n{worker.log()[-3000:]}"
    job.refresh_from_db()
    assert (job.status, job.attempts, job.started_at) == (Status.QUEUED, 0, None)
    assert not JobAttempt.objects.filter(job=job).exists()


@pytest.mark.parametrize(("content_type", "encoding", "body"), UNDECODABLE)
def test_a_message_that_is_not_json_is_dead_lettered_raw_and_never_run(
    hostile_worker, tmp_path, content_type, encoding, body
):
    # Given a queued job, and a message with its id and task name but a body that is not JSON
    marker = tmp_path / "deserialized"
    body = body.replace(b"{marker}", str(marker).encode())
    job = queued_job()
    headers = {"id": str(job.pk), "task": "diagnostics.sleep", "lang": "py", "argsrepr": "()", "kwargsrepr": "{}"}
    publish(body, content_type=content_type, content_encoding=encoding, headers=headers)
    # Then the worker keeps it as an undecodable dead letter, raw, and never runs the job
    letter = dead_letter(str(job.pk), hostile_worker)
    assert letter.reason == DeadLetterReason.UNDECODABLE, (letter.reason, letter.error_message)
    assert content_type in letter.error_message
    assert letter.body is None
    assert base64.b64decode(letter.raw_body.removeprefix("base64:")) == body
    assert letter.headers["task"] == "diagnostics.sleep"
    assert_never_ran(job, hostile_worker)
    assert not marker.exists()


def test_a_json_message_naming_a_task_no_worker_knows_is_dead_lettered_and_never_run(hostile_worker):
    job = queued_job()
    body = [[], {"seconds": 0}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    headers = {"id": str(job.pk), "task": "diagnostics.sleep.evil", "lang": "py", "argsrepr": "()", "kwargsrepr": "{}"}
    publish(json.dumps(body).encode(), content_type="application/json", content_encoding="utf-8", headers=headers)
    letter = dead_letter(str(job.pk), hostile_worker)
    assert (letter.reason, letter.task_name) == (DeadLetterReason.UNKNOWN_TASK, "diagnostics.sleep.evil")
    assert letter.body == body  # kept as sent (it is JSON: decoding it runs nothing)
    assert_never_ran(job, hostile_worker)


def test_a_json_message_with_a_malformed_task_body_is_dead_lettered_and_never_run(hostile_worker):
    job = queued_job()
    headers = {"id": str(job.pk), "task": "diagnostics.sleep", "lang": "py", "argsrepr": "()", "kwargsrepr": "{}"}
    publish(b'"just a string"', content_type="application/json", content_encoding="utf-8", headers=headers)
    letter = dead_letter(str(job.pk), hostile_worker)
    assert letter.reason in {DeadLetterReason.INVALID, DeadLetterReason.UNDECODABLE}, letter.reason
    assert_never_ran(job, hostile_worker)


def test_a_refused_message_does_not_stop_the_worker_from_running_the_next_job(hostile_worker, settings):
    # Given a hostile message just ahead of a real job in the same queue
    settings.TERMINUS_QUEUES = [*settings.TERMINUS_QUEUES, QUEUE]
    message_id = str(uuid.uuid4())
    headers = {"id": message_id, "task": "diagnostics.sleep", "lang": "py"}
    publish(
        b"\x80\x04garbage", content_type="application/x-python-serialize", content_encoding="binary", headers=headers
    )
    job = submit("diagnostics.sleep", {"seconds": 0}, queue=QUEUE)
    # Then the job still runs to success and the hostile message is on record
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status=Status.SUCCEEDED).first(), timeout=40, what="the job")
    assert done.attempts == 1
    assert hostile_worker.alive()
    assert dead_letter(message_id, hostile_worker).reason == DeadLetterReason.UNDECODABLE
