"""The browsable API: /api/docs/ and /api/redoc/ from local files, and a schema with examples and error shapes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rest_framework.test import APIClient

SCHEMA_JSON = {"HTTP_ACCEPT": "application/vnd.oai.openapi+json"}


@pytest.fixture(scope="module")
def schema(django_db_blocker: Any) -> dict[str, Any]:
    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/", **SCHEMA_JSON)
    assert response.status_code == 200
    return response.json()


def operations(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{method.upper()} {path}", op) for path, item in schema["paths"].items() for method, op in item.items()]


def asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.django_db
def test_swagger_ui_is_served_with_its_assets_from_this_site():
    page = APIClient().get("/api/docs/")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    urls = asset_urls(page.content.decode())
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in urls
    assert all(url.startswith("/") for url in urls), urls  # no CDN: works with no internet
    assert "<script>" not in page.content.decode() and "<style>" not in page.content.decode()  # CSP: none inline
    script = APIClient().get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert 'url: "/api/schema/"' in script.content.decode()


@pytest.mark.django_db
def test_redoc_is_served_with_its_assets_from_this_site():
    page = APIClient().get("/api/redoc/")
    assert page.status_code == 200
    urls = asset_urls(page.content.decode())
    assert "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js" in urls
    assert all(url.startswith("/") for url in urls), urls
    assert "<script>" not in page.content.decode()
    assert "script-src 'self';" in page["Content-Security-Policy"] + ";"


def test_the_docs_pages_are_not_operations_of_the_schema(schema):
    assert not [path for path in schema["paths"] if path.startswith(("/api/docs", "/api/redoc"))]


def test_every_operation_has_a_summary_and_an_example(schema):
    missing = []
    for label, op in operations(schema):
        ok_examples = [
            body
            for code, response in op["responses"].items()
            if code.startswith("2")
            for body in response.get("content", {}).values()
            if body.get("examples")
        ]
        request_examples = [
            body for body in op.get("requestBody", {}).get("content", {}).values() if "examples" in body
        ]
        if not op.get("summary") or not (ok_examples or request_examples):
            missing.append(label)
    assert missing == []


def test_every_error_response_has_the_one_error_shape_and_an_example(schema):
    for label, op in operations(schema):
        errors = {code: response for code, response in op["responses"].items() if code[0] in "45"}
        assert 401 in {int(code) for code in errors}, label  # every endpoint needs credentials
        for code, response in errors.items():
            body = response["content"]["application/json"]
            assert body["schema"] == {"$ref": "#/components/schemas/Error"}, (label, code)
            (example,) = body["examples"].values()
            assert set(example["value"]) == {"detail", "errors"}, (label, code)


def test_the_submit_example_shows_an_unknown_payload_field_refused(schema):
    examples = schema["paths"]["/api/jobs/"]["post"]["responses"]["400"]["content"]["application/json"]["examples"]
    (example,) = examples.values()
    assert "payload.secs" in example["value"]["errors"]
