"""The submission page in French and Spanish in Chromium: the browser's language, then the switcher by keyboard.

Screenshots go to test-results/browser/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import pytest

from tests.browser.test_submission_browser import SHOTS, browser, link_url, watch  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


def test_a_french_browser_reads_the_page_in_french_and_switches_to_spanish(browser, live_server, link_url):  # noqa: F811
    context = browser.new_context(locale="fr-CA", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    seen = watch(page, live_server)

    page.goto(link_url)

    assert page.locator("html").get_attribute("lang") == "fr-CA"
    assert page.get_by_role("heading", level=1).inner_text() == "Clé Canvas Data 2 de Northfield University"
    assert page.get_by_label("Identifiant client (Client ID)").is_visible()
    assert page.get_by_role("button", name="Afficher le secret").is_visible()  # the script's words, in French too
    page.screenshot(path=str(SHOTS / "submit-fr-CA.png"), full_page=True)

    # By keyboard: the switcher's select, then its button.
    switcher = page.get_by_label("Langue")
    switcher.focus()
    page.keyboard.press("End")  # Español, the last
    assert switcher.input_value() == "es"
    page.keyboard.press("Tab")
    with page.expect_navigation():
        page.keyboard.press("Enter")

    assert page.url == link_url
    assert page.locator("html").get_attribute("lang") == "es"
    assert page.get_by_role("heading", level=1).inner_text() == "Clave de Canvas Data 2 de Northfield University"
    assert page.get_by_role("button", name="Verificar y enviar la clave").is_visible()
    page.screenshot(path=str(SHOTS / "submit-es.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "submit-es-390.png"), full_page=True)
    assert seen == {"errors": [], "outside": []}
    context.close()
