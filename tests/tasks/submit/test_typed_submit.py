"""Typed, safe submission: unknown payload fields are refused, and submit() takes a job type's input model."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel, ConfigDict

from results.models import Job
from tasks.jobs.diagnostics import FailInput, SleepInput
from tasks.runtime import types
from tasks.runtime.registry import job
from tasks.runtime.types import get_job_type
from tasks.submit.outbox import submit, submit_many
from tasks.submit.validation import SubmissionError, validate_payload


class OpenInput(BaseModel):
    """A model that keeps the fields it does not declare."""

    model_config = ConfigDict(extra="allow")
    name: str = "x"


class Unclaimed(BaseModel):
    """A model no job type takes."""

    seconds: float = 0


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, types.JobType]:
    """The job-type registry, with what this test registers taken away after it."""
    registry = dict(types._REGISTRY)
    monkeypatch.setattr(types, "_REGISTRY", registry)
    return registry


# -- unknown fields ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_an_unknown_payload_field_is_refused_naming_it_and_the_fields_there_are():
    with pytest.raises(SubmissionError) as caught:
        submit("diagnostics.sleep", {"secs": 5})
    assert caught.value.errors == {
        "payload.secs": ["unknown field; diagnostics.sleep takes: seconds, heartbeat_every, leak_mb"]
    }
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_one_unknown_field_refuses_a_whole_batch_keyed_by_its_index():
    with pytest.raises(SubmissionError) as caught:
        submit_many(
            [{"type": "diagnostics.sleep", "payload": {}}, {"type": "diagnostics.sleep", "payload": {"secs": 1}}]
        )
    assert list(caught.value.errors) == ["jobs.1.payload.secs"]
    assert Job.objects.count() == 0


def test_free_form_fields_of_a_model_still_take_any_keys():
    # webhook.deliver's body and headers are dicts: their keys are the caller's, not fields
    clean = validate_payload("webhook.deliver", {"url": "https://example.com/", "body": {"anything": 1}})
    assert clean["body"] == {"anything": 1}


@pytest.mark.django_db
def test_a_job_type_declared_with_extra_fields_accepts_them(scratch_registry):
    scratch_registry["diagnostics.sleep"] = dataclasses.replace(get_job_type("diagnostics.sleep"), extra_fields=True)
    job_ = submit("diagnostics.sleep", {"seconds": 0, "secs": 5})
    assert job_.payload == {"seconds": 0.0, "heartbeat_every": 1.0, "leak_mb": 0}  # the model ignores it


def test_a_model_that_states_its_own_extra_policy_is_followed(scratch_registry):
    @job("tests.typed.open", input=OpenInput)
    def open_job(task, data):  # pragma: no cover - never run
        """Takes any fields."""

    assert get_job_type("tests.typed.open").extra_fields
    assert validate_payload("tests.typed.open", {"name": "a", "tag": "kept"}) == {"name": "a", "tag": "kept"}


# -- the typed Python API ------------------------------------------------------------------------
@pytest.mark.django_db
def test_submit_takes_the_input_model_of_a_job_type():
    job_ = submit(SleepInput(seconds=2))
    assert job_.type == "diagnostics.sleep"
    assert Job.objects.get(pk=job_.pk).payload == {"seconds": 2.0, "heartbeat_every": 1.0, "leak_mb": 0}


@pytest.mark.django_db
def test_submit_takes_a_type_name_with_its_input_model():
    job_ = submit("diagnostics.fail", FailInput(mode="permanent"), queue="slow")
    assert (job_.type, job_.queue, job_.payload["mode"]) == ("diagnostics.fail", "slow", "permanent")


@pytest.mark.django_db
def test_the_input_model_of_another_job_type_is_refused():
    with pytest.raises(SubmissionError) as caught:
        submit("diagnostics.sleep", FailInput())
    assert "takes tasks.jobs.diagnostics.SleepInput" in caught.value.errors["payload"][0]
    assert Job.objects.count() == 0


@pytest.mark.django_db
def test_a_model_no_job_type_takes_is_refused_asking_for_the_type():
    with pytest.raises(SubmissionError) as caught:
        submit(Unclaimed())
    assert "submit('<job type>', model)" in caught.value.errors["type"][0]


@pytest.mark.django_db
def test_a_model_built_without_validation_is_validated_again():
    with pytest.raises(SubmissionError) as caught:
        submit(SleepInput.model_construct(seconds=-1, heartbeat_every=1.0, leak_mb=0))
    assert "payload.seconds" in caught.value.errors
    assert Job.objects.count() == 0


def test_submit_with_a_model_takes_no_second_payload():
    with pytest.raises(TypeError, match="takes the input model alone"):
        submit(SleepInput(), {"seconds": 1})  # type: ignore[call-overload]
