"""/api/v1/docs/: the API's documentation page loads in Chromium from our own files, asking no other host."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.security.test_csp_browser import chromium, open_watched

pytestmark = pytest.mark.e2e

SHOTS = Path(django_settings.BASE_DIR) / "test-results" / "browser"  # gitignored, for a human to look at


def test_the_docs_page_is_served_from_our_static_files(client):
    response = client.get("/api/v1/docs/")

    assert response.status_code == 200
    body = response.content.decode()
    assert f"{django_settings.STATIC_URL}drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in body
    assert "cdn" not in body.lower() and "unpkg" not in body.lower() and "jsdelivr" not in body.lower()
    assert "<script>" not in body  # the start-up script is a file: the CSP needs no 'unsafe-inline'
    script = client.get("/api/v1/docs/?script=")
    assert script.status_code == 200 and "/api/v1/schema/" in script.content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_docs_page_shows_every_endpoint_in_chromium_with_no_request_elsewhere(live_server):
    with chromium() as browser:
        page, problems = open_watched(browser, live_server)
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith(live_server.url) else outside.append(r.url))
        failed: list[str] = []
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.set_viewport_size({"width": 1366, "height": 900})
        response = page.goto(live_server.url + "/api/v1/docs/")
        assert response.status == 200
        page.wait_for_selector(".opblock-summary-path", timeout=20_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "api-docs-1366.png"), full_page=True)
        violations = page.evaluate("window.__csp")

    assert outside == []
    assert failed == [] and problems == [] and violations == []
    assert any("/api/v1/institutions/{slug}/key" in path for path in paths), paths
    assert any("/api/v1/keys/" in path for path in paths), paths
    assert any("/syncs" in path for path in paths), paths
