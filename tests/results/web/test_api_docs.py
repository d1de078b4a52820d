"""The browsable API renders in a real Chromium under the site's Content-Security-Policy, from local files only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.results.web.helpers import WebServer, artifact

#: Reports every CSP violation the page meets (the console message alone can be missed for workers).
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
"""

#: Redoc's footer logo, hard-coded in its bundle; blocked by img-src.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def watch(page: Any, web: WebServer) -> tuple[list[str], list[str]]:
    """(CSP violations, HTTP requests for anything not on the site) seen by ``page`` from now on."""
    violations: list[str] = []
    offsite: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and violations.append(message.text))
    page.on(
        "request",
        lambda request: (
            request.url.startswith(("http:", "https:"))
            and not request.url.startswith(web.url)
            and offsite.append(request.url)
        ),
    )
    page.add_init_script(WATCH_VIOLATIONS)
    return violations, offsite


@pytest.mark.django_db(transaction=True)
def test_swagger_ui_lists_every_operation_with_no_csp_violation(page: Any, web: WebServer) -> None:
    violations, offsite = watch(page, web)
    response = page.goto(f"{web.url}/api/docs/")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # Swagger UI fetched the schema and rendered the operations list
    page.wait_for_selector(".opblock-summary", timeout=30_000)
    page.wait_for_load_state("networkidle")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/jobs/" in paths and "/api/dead-letters/{id}/replay/" in paths
    page.get_by_text("Submit a job").first.click()  # an operation opens, with its example
    page.wait_for_selector(".opblock.is-open .opblock-description-wrapper")
    page.screenshot(path=str(artifact("api-docs-swagger.png")), full_page=False)
    assert page.evaluate("window.__violations") == [] and violations == []
    assert offsite == []


@pytest.mark.django_db(transaction=True)
def test_redoc_renders_the_reference_with_nothing_blocked_but_its_cdn_logo(page: Any, web: WebServer) -> None:
    violations, offsite = watch(page, web)
    response = page.goto(f"{web.url}/api/redoc/")
    assert response is not None and response.status == 200
    page.wait_for_selector("h2:has-text('Submit a job')", timeout=30_000)
    page.wait_for_load_state("networkidle")
    assert page.locator("h2", has_text="Replay a dead letter as a new job").count() == 1
    # its injected styles applied: the menu is a fixed-width side column, not unstyled text
    assert page.locator(".menu-content").bounding_box()["width"] < 400
    page.screenshot(path=str(artifact("api-docs-redoc.png")), full_page=False)
    # The one thing blocked: the Redocly logo Redoc's footer loads from its CDN (it hides it on error).
    assert page.evaluate("window.__violations") == [f"img-src {REDOCLY_LOGO}"]
    assert all(REDOCLY_LOGO in message for message in violations)
    assert set(offsite) <= {REDOCLY_LOGO}
