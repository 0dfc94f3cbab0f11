"""Accessibility tests in a real Chromium: axe-core (from npm, pinned in package.json and its lock file) and Playwright.

One browser for the whole package (tests/a11y), started once: launching
Chromium is most of a browser test's cost. While it runs, Playwright's sync
API keeps an event loop running in this thread, so Django's ORM is allowed
here (DJANGO_ALLOW_ASYNC_UNSAFE) for as long as the browser lives, and no
longer. Every axe run is also written to test-results/a11y/ (one JSON per
page, and summary.html with its screenshot) for a human to look at.

Without Chromium or axe-core (`make install`: npm ci in tests/a11y) the
tests skip, except in CI (env CI set), where they fail.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from tests.conftest import MIGRATED_ROLE_GROUPS, restore_role_groups

CHROMIUM = "/usr/bin/chromium"
AXE_JS = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
RESULTS = Path(django_settings.BASE_DIR) / "test-results" / "a11y"

# WCAG 2.0, 2.1 and 2.2 at levels A and AA: the success criteria the
# conformance report (docs/ACCESSIBILITY.md) claims, as axe-core tags them.
WCAG_AA_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
SERIOUS = {"serious", "critical"}


def _missing(what: str, how: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; {how}")
    pytest.skip(f"{what} is missing ({how})")


@pytest.fixture(scope="package", autouse=True)
def role_groups_kept(django_db_setup, django_db_blocker):
    """Put back the staff role groups (and their permissions) that these tests' flushes delete.

    A live server needs transactional tests, which end by emptying every
    table, rows made by data migrations too (the role groups of
    credentials/migrations): a test run after them that reads a group
    directly would find none (make_staff makes them again itself).
    """
    yield
    with django_db_blocker.unblock():
        restore_role_groups(MIGRATED_ROLE_GROUPS)


@pytest.fixture(scope="package")
def browser():
    """Chromium, once for every test in tests/a11y."""
    if not shutil.which(CHROMIUM):
        _missing(CHROMIUM, ".ci/run installs it with apt-get (package chromium)")
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            try:
                yield chromium
            finally:
                chromium.close()


class Axe:
    """axe-core run in a page: `axe.violations(page, name)`; every run is kept for the summary."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.runs: list[dict] = []

    def run(self, page, name: str, *, tags: list[str] = WCAG_AA_TAGS) -> list[dict]:
        if not page.evaluate("typeof window.axe === 'object'"):
            # Through the DevTools protocol, as Playwright evaluates: the page's
            # Content-Security-Policy (no inline scripts) does not apply.
            page.evaluate(self.source + "\n;true")
        result = page.evaluate(
            "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
            tags,
        )
        violations = [
            {
                "id": v["id"],
                "impact": v["impact"],
                "help": v["help"],
                "targets": [", ".join(map(str, node["target"])) for node in v["nodes"]],
                "summary": v["nodes"][0]["failureSummary"] if v["nodes"] else "",
            }
            for v in result["violations"]
        ]
        viewport = page.viewport_size or {}
        run = {
            "name": name,
            "url": page.url,
            "width": viewport.get("width"),
            "scheme": page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'"),
            "passes": len(result.get("passes", [])),
            "violations": violations,
        }
        self.runs.append(run)
        return violations

    def assert_clean(self, page, name: str) -> None:
        """Zero violations of WCAG 2.2 A and AA."""
        violations = self.run(page, name)
        assert violations == [], f"{name}: {format_violations(violations)}"

    def assert_no_serious(self, page, name: str) -> None:
        """No serious or critical violation of WCAG 2.2 A and AA (the staff pages)."""
        violations = [v for v in self.run(page, name) if v["impact"] in SERIOUS]
        assert violations == [], f"{name}: {format_violations(violations)}"


def format_violations(violations: list[dict]) -> str:
    return "\n".join(
        f"  [{v['impact']}] {v['id']}: {v['help']} at {'; '.join(v['targets'][:5])}\n    {v['summary']}"
        for v in violations
    )


@pytest.fixture(scope="package")
def axe(browser):
    """axe-core's script, read once; at the end, test-results/a11y/summary.html and its screenshot."""
    if not AXE_JS.exists():
        _missing(str(AXE_JS), "`make install` runs npm ci in tests/a11y")
    checker = Axe(AXE_JS.read_text())
    yield checker
    if checker.runs:
        _write_summary(browser, checker)


def _write_summary(browser, checker: Axe) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "axe-runs.json").write_text(json.dumps(checker.runs, indent=1))
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class='{}'>{}</td></tr>".format(
            html.escape(run["name"]),
            run["width"],
            run["scheme"],
            run["passes"],
            "bad" if run["violations"] else "ok",
            html.escape(", ".join(f"{v['id']} ({v['impact']})" for v in run["violations"]) or "none"),
        )
        for run in checker.runs
    )
    version = checker.source[:40].split("*")[1].strip(" !")  # the banner: "/*! axe v4.14.1 ..."
    page_html = (
        "<!doctype html><html lang='en'><meta charset='utf-8'><title>axe-core results</title><style>"
        "body{font:14px system-ui,sans-serif;margin:1.5rem;color:#1d2433}table{border-collapse:collapse}"
        "td,th{border:1px solid #c9d1dc;padding:.25rem .6rem;text-align:left}.ok{color:#1e6b3a;font-weight:600}"
        ".bad{color:#b3261e;font-weight:600}</style><h1>axe-core: WCAG 2.2 A and AA</h1>"
        f"<p>{html.escape(version)}; tags {', '.join(WCAG_AA_TAGS)}; {len(checker.runs)} runs.</p>"
        "<table><tr><th>Page and state</th><th>Width (px)</th><th>Scheme</th><th>Rules passed</th>"
        f"<th>Violations</th></tr>{rows}</table>"
    )
    (RESULTS / "summary.html").write_text(page_html)
    page = browser.new_page(viewport={"width": 1000, "height": 400})
    page.set_content(page_html)
    page.screenshot(path=RESULTS / "summary.png", full_page=True)
    page.close()
