"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis + hypothesis).

Every operation in ``/api/schema/`` gets schema-valid and schema-violating requests, sent
in-process to the WSGI application with a real token, against the real test database. Each
answer must be documented (status code, content type, headers, body schema), never a 5xx,
refused with a 4xx when the request violates the schema, and every error must have the API's one
error shape. Acting as a tenant's user, no answer may carry another tenant's job or a traceback.

The job ``id`` path parameter is widened to "any UUID or one of the seeded jobs", so the
generated requests reach existing jobs in every state (and another tenant's) as well as unknown
ones. The run is deterministic (``derandomize``); ``SECURITY_FUZZ_EXAMPLES`` sets the number of
examples per operation and mode (CI default below; e.g. 2000 for a deep run). The number of
requests sent is printed in the "security fuzz" section of the pytest summary.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, Phase, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from project.wsgi import application
from results.models import DeadLetter
from tests.factories import token_for
from tests.security.helpers import FUZZ_REPORT, SECRET_TRACEBACK, TenantJobs, jobs_in_every_state

#: Examples per operation and generation mode; CI keeps the default, a deep run raises it.
EXAMPLES = int(os.environ.get("SECURITY_FUZZ_EXAMPLES", "20"))
#: Optional: only the operations whose label contains one of these (e.g. "POST /api/jobs/"), to dig.
ONLY = [label for label in os.environ.get("SECURITY_FUZZ_OPERATIONS", "").split(",") if label]

pytestmark = pytest.mark.timeout(300 + 2 * EXAMPLES)  # a deep run takes its time

# The checks that hold for this API. positive_data_acceptance is left out on purpose: the
# schema cannot say which job types exist, what each payload must hold or that a cursor is
# opaque, so schema-valid requests are rightly refused with a documented 400.
SCHEMA_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def check_error_shape(response: Any, where: str) -> None:
    """Every 4xx/5xx is JSON ``{"detail": "<sentence>", "errors": {field: [messages]}}``."""
    if response.status_code < 400:
        return
    where = f"{response.status_code} for {where}"
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{where}: the error is {content_type!r}"
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"detail", "errors"}, (where, body)
    assert isinstance(body["detail"], str) and body["detail"], (where, body)
    assert isinstance(body["errors"], dict), (where, body)
    for name, messages in body["errors"].items():
        assert isinstance(messages, list) and messages, (where, name, body)
        assert all(isinstance(message, str) and message for message in messages), (where, name, body)


def check_nothing_foreign(response: Any, *, seeds: Seeds, path: str) -> None:
    """A tenant's user never sees another tenant's job or dead letter, a poison message, or a traceback.

    Asking for another tenant's object by id is a 404, like an unknown id (whose message may
    repeat the id the client sent, and nothing else).
    """
    text = response.content.decode(errors="replace")
    segments = path.strip("/").split("/")
    asked = {marker for marker in seeds.foreign_markers if marker in segments}
    if path.startswith("/api/dead-letters/") and len(segments) > 2 and segments[2].isdigit():
        asked |= {segments[2]} if int(segments[2]) in seeds.foreign_dead_letters else set()
    if asked:
        assert response.status_code in {400, 401, 404}, f"{response.status_code} for another tenant's {asked} at {path}"
    leaked = sorted(marker for marker in seeds.foreign_markers - asked if marker in text)
    assert not leaked, f"another tenant's {leaked} in the answer to {path}"
    assert "STAFF-ONLY-TRACEBACK" not in text, f"a traceback shown to a non-staff user at {path}"
    if path.rstrip("/") == "/api/dead-letters" and response.status_code == 200:
        listed = {row["id"] for row in json.loads(text)["results"]}
        assert not listed & seeds.foreign_dead_letters, f"another tenant's dead letters listed: {listed}"


@dataclass
class Seeds:
    """Objects the generated requests may name: ids per resource (path prefix), and what is foreign."""

    ids: dict[str, list[Any]]  # "/api/jobs/" -> job ids, "/api/dead-letters/" -> dead-letter ids
    foreign_markers: set[str]  # strings of another tenant's objects (job ids, message keys)
    foreign_dead_letters: set[int]


def seed(jobs: list[TenantJobs], *, foreign: TenantJobs | None) -> Seeds:
    """Every tenant's jobs in every state, a dead letter of each failed one and one poison message."""
    letters = {
        tenant.user.pk: DeadLetter.objects.create(
            message_key=str(tenant.failed.pk),
            job=tenant.failed,
            task_name=tenant.failed.type,
            reason="non_retryable",
            traceback=SECRET_TRACEBACK,
        )
        for tenant in jobs
    }
    poison = DeadLetter.objects.create(message_key=str(uuid.uuid4()), task_name="evil.task", reason="unknown_task")
    all_letters = [*letters.values(), poison]
    markers: set[str] = set()
    foreign_letters: set[int] = set()
    if foreign is not None:
        markers = foreign.ids | {poison.message_key}
        foreign_letters = {letters[foreign.user.pk].pk, poison.pk}
    return Seeds(
        ids={
            "/api/jobs/": sorted(job_id for tenant in jobs for job_id in tenant.ids),
            "/api/dead-letters/": sorted(letter.pk for letter in all_letters),
        },
        foreign_markers=markers,
        foreign_dead_letters=foreign_letters,
    )


def widen_ids(raw_schema: dict[str, Any], seeds: Seeds) -> dict[str, Any]:
    """The schema with every ``id`` path parameter also accepting the seeded objects' ids.

    Left as it is, the ``id`` of a job is a random UUID: every request would be a 404.
    """
    schema = copy.deepcopy(raw_schema)
    for path, operations in schema["paths"].items():
        known = next((ids for prefix, ids in seeds.ids.items() if path.startswith(prefix)), None)
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and parameter["name"] == "id" and known:
                    parameter["schema"] = {"anyOf": [parameter["schema"], {"enum": known}]}
    return schema


def describe(exc: BaseException) -> str:
    """The failure's message with those of every exception it groups (hypothesis nests them)."""
    text = str(exc)
    for inner in getattr(exc, "exceptions", ()):
        text += "\n  | " + describe(inner).replace("\n", "\n  | ")
    return text


@contextlib.contextmanager
def wsgi_in_test_transaction() -> Iterator[None]:
    """Call the WSGI app inside the test's transaction, as Django's test client does.

    Django closes "old" connections at the start and end of every request; inside the test's
    transaction that would close the one connection the test runs on.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz(settings: Any) -> Callable[..., None]:
    # A long poll (?wait=N) of a job that is not terminal holds the request up to the cap.
    settings.TERMINUS_LONG_POLL_MAX = 1
    # Thousands of generated submissions a minute are the point here, not a flood to throttle
    # (tests/security/test_limits.py proves the throttle).
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"submit": "1000000/min"}}
    raw = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    def run(name: str, user: User, *, seeds: Seeds, extra_check: Callable[[Any, str], None] | None) -> None:
        schema = schemathesis.openapi.from_dict(widen_ids(raw, seeds))
        schema.app = application
        headers = {"Authorization": f"Token {token_for(user)}"}
        sent = 0
        failures: list[str] = []
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 7, [operation.label for operation in operations]
        operations = [op for op in operations if not ONLY or any(label in op.label for label in ONLY)]
        with wsgi_in_test_transaction():
            for operation in operations:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                    @hypothesis_settings(
                        max_examples=EXAMPLES,
                        derandomize=True,
                        database=None,
                        deadline=None,
                        phases=[Phase.explicit, Phase.generate],
                        suppress_health_check=list(HealthCheck),
                    )
                    @given(case=operation.as_strategy(generation_mode=mode))
                    def probe(case: Any) -> None:
                        nonlocal sent
                        # A raw "?" or "#" in a path parameter would end the path; a client encodes it.
                        assume(not any(char in str(v) for v in case.path_parameters.values() for char in "?#"))
                        sent += 1
                        response = case.call(headers=headers)
                        case.validate_response(response, checks=SCHEMA_CHECKS, headers=headers)
                        check_error_shape(response, f"{case.method} {case.formatted_path} {case.query}")
                        if extra_check is not None:
                            extra_check(response, case.formatted_path)

                    try:
                        probe()
                    except Unsatisfiable:
                        # Nothing in this operation can be made invalid (no parameters, no body).
                        assert mode is GenerationMode.NEGATIVE, operation.label
                    except (Exception, BaseExceptionGroup) as exc:  # report every failing operation, not the first
                        failures.append(f"--- {operation.label} ({mode.value}) ---\n{describe(exc)}")
        FUZZ_REPORT[name] = sent
        assert not failures, f"{len(failures)} failing operation/mode pairs:\n\n" + "\n\n".join(failures)

    return run


@pytest.mark.django_db
def test_the_api_answers_every_generated_request_as_documented_and_never_leaks_another_tenant(
    fuzz, alice, acme_jobs: TenantJobs, globex_jobs: TenantJobs
):
    seeds = seed([acme_jobs, globex_jobs], foreign=globex_jobs)

    def tenant_view(response: Any, path: str) -> None:
        check_nothing_foreign(response, seeds=seeds, path=path)

    fuzz("tenant user", alice, seeds=seeds, extra_check=tenant_view)


@pytest.mark.django_db
def test_the_api_answers_every_generated_staff_request_as_documented(fuzz, make_user, alice, bob):
    staff = make_user("root", staff=True)
    seeds = seed([jobs_in_every_state(alice), jobs_in_every_state(bob)], foreign=None)
    fuzz("staff user", staff, seeds=seeds, extra_check=None)
