"""Accessible customer mails (issue 28.3): two parts, the language said, headings, links with words, axe-core clean.

Every customer mail in each of its states (tests/credentials/customer_mail_samples.py)
and each shipped language. The HTML part is loaded into Debian's Chromium with
Playwright's page.set_content and checked by axe-core (pinned in tests/a11y,
`make install` installs it) at the WCAG 2.0, 2.1 and 2.2 A and AA tags. Without
Chromium or axe-core the axe tests skip, except in CI (env CI set), where they fail.
"""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from credentials.mail.context import link_context
from credentials.mail.messages import build_email, render_email
from credentials.mail.recipients import greeting_name
from institutions.models import Contact
from tests.credentials.customer_mail_samples import LINK_URL, customer_mail_samples

pytestmark = pytest.mark.django_db

LANGUAGES = {"en-gb": "en-GB", "fr-ca": "fr-CA", "es": "es"}
CHROMIUM = "/usr/bin/chromium"
AXE = Path(django_settings.BASE_DIR) / "tests" / "a11y" / "node_modules" / "axe-core" / "axe.min.js"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa"]
# Link texts that say nothing out of context, in each language.
VAGUE = {
    "click here",
    "here",
    "link",
    "this link",
    "cliquez ici",
    "ici",
    "ce lien",
    "haga clic aquí",
    "aquí",
    "este enlace",
}


@pytest.fixture
def samples(make_institution, make_credential):
    """{language: [Sample]} for an institution with a named contact and an owner."""

    def make(language):
        school = make_institution(name="Harbour City Schools", language=language, timezone="Pacific/Auckland")
        Contact.objects.create(institution=school, name="Ana Souza", email="ana@harbour.example.edu")
        key = make_credential(school, days=300)
        return customer_mail_samples(institution=school, credential=key, language=language)

    return {language: make(language) for language in LANGUAGES}


class _Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lang = None
        self.headings: list[tuple[str, str]] = []
        self.links: list[tuple[str, str]] = []
        self._open: list[tuple[str, str, list[str]]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.lang = attrs.get("lang")
        if tag in ("h1", "h2", "h3", "a"):
            self._open.append((tag, attrs.get("href", ""), []))

    def handle_data(self, data):
        for _, _, parts in self._open:
            parts.append(data)

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            tag, href, parts = self._open.pop()
            text = " ".join("".join(parts).split())
            (self.links if tag == "a" else self.headings).append((href, text) if tag == "a" else (tag, text))


def outline(html: str) -> _Outline:
    parsed = _Outline()
    parsed.feed(html)
    return parsed


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_customer_mail_has_a_text_part_its_language_a_heading_and_links_with_words(samples, language):
    for sample in samples[language]:
        page = outline(sample.html)
        assert sample.subject and len(sample.text.split()) > 20, sample.label
        assert page.lang == LANGUAGES[language], sample.label
        assert [tag for tag, _ in page.headings].count("h1") == 1, sample.label
        assert all(text for _, text in page.headings), sample.label
        for href, text in page.links:
            assert text and text.lower().strip(".") not in VAGUE, (sample.label, href, text)
            # A link's words are never its bare address, except an email address, which is its own name.
            assert href.startswith("mailto:") or not text.startswith(("http", "www.")), (sample.label, text)
        steps = [text for tag, text in page.headings if tag == "h2"]
        if sample.label.startswith(("reminder", "key invalid")):
            assert len(steps) == 1, sample.label  # "How to create the new key", a real heading


def test_a_customer_mail_is_two_parts_from_the_registry_in_the_institutions_language(
    make_institution, make_credential, settings
):
    settings.REGISTRY_SENDER_NAME = "Registre des clés EdPotential"
    settings.DEFAULT_FROM_EMAIL = "CD2 key registry <cd2-keys@edpotential.example>"
    school = make_institution(name="Cégep de Laval", language="fr-ca")
    Contact.objects.create(institution=school, name="Aline Tremblay", email="aline@laval.example.ca")
    key = make_credential(school, days=300)
    [sample] = [
        s for s in customer_mail_samples(institution=school, credential=key, language="fr-ca") if s.label == "link"
    ]

    context = link_context(institution=school, url=LINK_URL, expires_at=timezone.now())
    message = build_email("link", to=["aline@laval.example.ca"], context=context, language=school.language).message()

    assert message["From"] == "=?utf-8?q?Registre_des_cl=C3=A9s_EdPotential?= <cd2-keys@edpotential.example>"
    assert [part.get_content_type() for part in message.get_payload()] == ["text/plain", "text/html"]
    assert sample.text.startswith("Bonjour Aline Tremblay,")
    # The signature is the sender's name too.
    assert sample.text.rstrip().endswith("Registre des clés EdPotential")
    assert "Registre des clés EdPotential</p>" in sample.html


def test_a_mail_greets_its_one_addressee_by_name_and_several_with_a_neutral_greeting(make_institution):
    school = make_institution(name="Harbour City Schools", language="es")
    Contact.objects.create(institution=school, name="Ana Souza", email="ana@harbour.example.edu")
    Contact.objects.create(institution=school, name="Ben Okafor", email="ben@harbour.example.edu")
    context = link_context(institution=school, url=LINK_URL, expires_at=timezone.now())

    def greeting(to, **known):
        name = greeting_name(institution=school, to=to, **known)
        return render_email("link", {**context, "greeting_name": name}, language="es")[1].splitlines()[0]

    assert greeting(["ANA@harbour.example.edu"]) == "Hola, Ana Souza:"
    assert greeting(["ana@harbour.example.edu", "ben@harbour.example.edu"]) == "Hola:"
    assert greeting(["someone@else.example"], known="Sam Submitter") == "Hola, Sam Submitter:"
    assert greeting(["someone@else.example"]) == "Hola:"


# --------------------------------------------------------------------------
# axe-core in Chromium
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def axe_page():
    for needed, what in (
        (shutil.which(CHROMIUM), f"{CHROMIUM} (apt-get install chromium)"),
        (AXE.exists(), f"{AXE} (make install)"),
    ):
        if not needed:
            if os.environ.get("CI"):
                pytest.fail(f"{what} is missing")
            pytest.skip(f"{what} is missing")
    from playwright.sync_api import sync_playwright

    # Playwright's event loop in this thread: Django's ORM refuses to run beside one unless told.
    # For this module only: a process the next test starts (manage.py check --deploy) must not inherit it.
    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page(viewport={"width": 600, "height": 900})
        finally:
            browser.close()


def axe_violations(page, html: str) -> list[dict]:
    page.set_content(html)
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG_TAGS)
    return [{"id": v["id"], "nodes": [n["html"][:120] for n in v["nodes"]]} for v in result["violations"]]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_customer_mail_passes_axe_core(samples, axe_page, language):
    found = {sample.label: axe_violations(axe_page, sample.html) for sample in samples[language]}

    assert {label: violations for label, violations in found.items() if violations} == {}


def test_axe_core_fails_a_mail_without_its_language_or_with_grey_small_print(samples, axe_page):
    sample = samples["fr-ca"][0]
    no_lang = sample.html.replace('<html lang="fr-CA">', "<html>")
    grey = sample.html.replace("color:#52606d", "color:#aab2bd")

    assert "html-has-lang" in {v["id"] for v in axe_violations(axe_page, no_lang)}
    assert "color-contrast" in {v["id"] for v in axe_violations(axe_page, grey)}
