"""The customer's languages: complete catalogues, nothing left unmarked, French mails and Spanish pages.

The pseudo-locale run: a catalogue made at test time from the shipped one
(GNU gettext's msgen and msgfilter: every msgstr is its msgid between ⟦ and
⟧), then every customer page state and every customer mail rendered in it. Any
visible words outside the markers were never marked for translation, or are
marked but missing from the catalogues; data (names, addresses, dates,
numbers, links, the key's name) is taken out first.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import time_machine
from django.conf import settings as django_settings
from django.core import mail
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.urls import reverse
from django.utils import translation

from credentials import formatting
from credentials.days import expiry_phrase
from credentials.forms import SubmissionForm
from credentials.services.links import submission_link_create
from credentials.services.submission import already_have_message, forbidden_reason, taken_message
from credentials.validators import add_months
from devtools.fake_gateway import DEMO_ACCEPTED_CLIENT_ID, DEMO_ACCEPTED_SECRET, DEMO_REJECTED_CLIENT_ID
from institutions.models import Contact
from tests.conftest import reminders_run
from tests.credentials.customer_mail_samples import customer_mail_samples

pytestmark = pytest.mark.django_db

LOCALE = Path(django_settings.BASE_DIR) / "locale"
SHIPPED = ("fr_CA", "es")
GETTEXT = ("msgfmt", "msgattrib", "msgen", "msgfilter")
PSEUDO = "en-xa"  # a language nobody ships: Android's pseudo-locale code
OPEN, CLOSE = "⟦", "⟧"


def _need_gettext():
    missing = [tool for tool in GETTEXT if not shutil.which(tool)]
    if missing:
        pytest.fail(f"GNU gettext is missing ({', '.join(missing)}): apt-get install gettext (.ci/run does)")


def _run(*args: str | Path) -> str:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def _msgids(po: Path) -> set[str]:
    """The msgids of a catalogue, as msgattrib writes them without wrapping."""
    text = _run("msgattrib", "--no-wrap", "--no-obsolete", po)
    return set(re.findall(r'^msgid "(.+)"$', text, re.M))


# --------------------------------------------------------------------------
# The shipped catalogues
# --------------------------------------------------------------------------


@pytest.mark.parametrize("language", SHIPPED)
def test_a_shipped_catalogue_has_no_empty_and_no_fuzzy_entry_and_compiles(language, tmp_path):
    _need_gettext()
    po = LOCALE / language / "LC_MESSAGES" / "django.po"

    untranslated = _run("msgattrib", "--untranslated", "--no-obsolete", po)
    fuzzy = _run("msgattrib", "--only-fuzzy", "--no-obsolete", po)
    # --check: the placeholders (%(institution)s ...) and the plural forms agree with the English.
    _run("msgfmt", "--check", "--statistics", "-o", tmp_path / "django.mo", po)

    assert "msgid" not in untranslated, untranslated
    assert "msgid" not in fuzzy, fuzzy
    assert (tmp_path / "django.mo").stat().st_size > 10_000


def test_the_shipped_catalogues_translate_the_same_texts():
    _need_gettext()
    french, spanish = (_msgids(LOCALE / lang / "LC_MESSAGES" / "django.po") for lang in SHIPPED)
    assert french == spanish
    assert "Check and send the key" in french


# --------------------------------------------------------------------------
# The pseudo-locale run
# --------------------------------------------------------------------------


@pytest.fixture
def pseudo(settings, tmp_path):
    """A catalogue in which every text is ⟦its English⟧, active as language en-xa."""
    _need_gettext()
    shipped = LOCALE / "fr_CA" / "LC_MESSAGES" / "django.po"
    folder = tmp_path / "locale" / "en_XA" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    emptied, english = tmp_path / "emptied.po", tmp_path / "english.po"
    _run("msgfilter", "-i", shipped, "-o", emptied, "--keep-header", "sed", "-e", "d")
    _run("msgen", emptied, "-o", english)
    _run(
        "msgfilter",
        "-i",
        english,
        "-o",
        folder / "django.po",
        "--keep-header",
        "sed",
        "-e",
        f"s/^/{OPEN}/;s/$/{CLOSE}/",
    )
    _run("msgfmt", "-o", folder / "django.mo", folder / "django.po")
    settings.LOCALE_PATHS = [tmp_path / "locale"]
    settings.LANGUAGES = [*settings.LANGUAGES, (PSEUDO, "Pseudo")]
    yield PSEUDO
    translation.activate(settings.LANGUAGE_CODE)


class _Visible(HTMLParser):
    """The words a reader meets: text outside script and style, and the attributes read out or shown."""

    SPOKEN = ("alt", "title", "aria-label", "placeholder", "data-busy-label")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._hidden += 1
        for name, value in attrs:
            if value and (name in self.SPOKEN or name.startswith("data-say-")):
                self.parts.append(value)
            if name == "value" and tag == "input" and dict(attrs).get("type") in ("submit", "button"):
                self.parts.append(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._hidden -= 1

    def handle_data(self, data):
        if not self._hidden:
            self.parts.append(data)


DATA = [
    re.compile(r"https?://\S+"),
    re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"),
    # English dates as credentials/formatting.py writes them: "Sunday 14 Mar 2027", "14 Mar 2027, 05:25 NZDT".
    re.compile(r"\b(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b"),
    re.compile(
        r"\b\d{1,2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4}(, \d\d:\d\d( [A-Z]{2,5}|[+-]\d\d)?)?"
    ),
    re.compile(r"\b[a-z0-9-]+(\.[a-z0-9-]+)+\b"),  # host names: identity.instructure.com, the Canvas domain
    re.compile(r"\d+"),
]


def untranslated_words(text: str, *, data: list[str], html: bool) -> list[str]:
    """Words outside the markers once data is taken out: what was never put through the catalogue."""
    if html:
        parser = _Visible()
        parser.feed(text)
        text = "\n".join(parser.parts)
    while True:  # innermost first: a translated text may carry another (a reason inside a sentence)
        stripped = re.sub(f"{OPEN}[^{OPEN}{CLOSE}]*{CLOSE}", " ", text)
        if stripped == text:
            break
        text = stripped
    for value in sorted(data, key=len, reverse=True):
        text = text.replace(value, " ")
    for pattern in DATA:
        text = pattern.sub(" ", text)
    return re.findall(r"[^\W\d_]{2,}", text)


def page_data(institution, settings) -> list[str]:
    # The language switcher names each language in itself: data, not text of ours.
    names = [name for _, name in settings.LANGUAGES]
    return [
        institution.name,
        institution.canvas_domain,
        settings.CD2_KEY_NAME,
        settings.REGISTRY_SENDER_NAME,
        "EdPotential",
        "Ada Admin",
        *names,
    ]


def test_the_checker_finds_a_word_outside_the_markers():
    assert untranslated_words("<p>⟦Hello⟧ there</p>", data=[], html=True) == ["there"]
    assert untranslated_words("<p>⟦Key ⟦inner⟧ here⟧, 14 Mar 2027</p>", data=[], html=True) == []
    assert untranslated_words('<button aria-label="Show">⟦x⟧</button>', data=[], html=True) == ["Show"]


@pytest.fixture
def northfield(institution, settings):
    institution.account_owner = None
    return institution


def _submit(client, token, **overrides):
    data = {
        "client_id": DEMO_ACCEPTED_CLIENT_ID,
        "secret": DEMO_ACCEPTED_SECRET,
        # A year from the link's own day (the view's today), never a fixed date.
        "expires_on": add_months(dt.date.today(), 12).isoformat(),
        "submitted_by": "Ada Admin",
        "submitted_by_email": "ada@northfield.example.edu",
    }
    data.update(overrides)
    return client.post(reverse("credentials:submit", kwargs={"token": token}), data=data, follow=True)


def customer_pages(client, institution, cd2_gateway, settings) -> dict[str, str]:
    """Every state of every customer page, as the browser gets it."""
    pages: dict[str, str] = {}

    def get(name, url):
        response = client.get(url)
        pages[name] = response.content.decode()

    def post(name, response):
        pages[name] = response.content.decode()

    token = submission_link_create(institution=institution).token
    url = reverse("credentials:submit", kwargs={"token": token})
    get("submit", url)
    post("submit, everything missing", client.post(url, data={}))
    post(
        "submit, each field wrong",
        _submit(client, token, client_id="not a client id", secret="two words", expires_on="yesterday"),
    )
    post("submit, a date in the past", _submit(client, token, expires_on=(dt.date.today() - dt.timedelta(days=3))))
    post("submit, too far", _submit(client, token, expires_on=(dt.date.today() + dt.timedelta(days=5 * 365))))
    post("submit, Secret is the Client ID", _submit(client, token, secret=DEMO_ACCEPTED_CLIENT_ID))
    post("submit, short expiry", _submit(client, token, expires_on=(dt.date.today() + dt.timedelta(days=20))))
    post("submit, Instructure refused", _submit(client, token, client_id=DEMO_REJECTED_CLIENT_ID))
    cd2_gateway.set_mode("down")
    post("received, pending (CD2 down)", _submit(client, token))
    cd2_gateway.set_mode(None)
    token = submission_link_create(institution=institution).token
    post(
        "received, the key works",
        _submit(client, token, client_id="us-east-1#5a1e0000-0000-4000-8000-00000000beef", secret="planted-secret"),
    )
    token = submission_link_create(institution=institution).token
    post("submit, already on file", _submit(client, token))
    get("link no longer works", reverse("credentials:submit", kwargs={"token": "x" * 43}))
    get("request a link", reverse("credentials:request_link"))
    post("request a link, bad address", client.post(reverse("credentials:request_link"), data={"email": "nope"}))
    post(
        "request a link, sent",
        client.post(reverse("credentials:request_link"), data={"email": "a@b.example"}, follow=True),
    )
    request = RequestFactory().get("/k/whatever/")
    for template in ("credentials/rate_limited.html", "credentials/too_large.html", "400.html", "503.html"):
        pages[template] = render_to_string(template, {}, request=request)
    return pages


def test_every_customer_page_state_is_marked_for_translation(
    client, pseudo, northfield, cd2_gateway, settings, isolated_cache
):
    cd2_gateway.add_key("us-east-1#5a1e0000-0000-4000-8000-00000000beef", "planted-secret")
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = pseudo
    with translation.override(pseudo):
        pages = customer_pages(client, northfield, cd2_gateway, settings)

    found = {
        name: untranslated_words(body, data=page_data(northfield, settings), html=True) for name, body in pages.items()
    }

    assert len(pages) == 19
    assert all(OPEN in body for body in pages.values())
    assert {name: words for name, words in found.items() if words} == {}
    # The states the run means to reach were reached.
    assert "⟦Instructure did not accept this key⟧" in pages["submit, Instructure refused"]
    assert "⟦This key is already on file with us⟧" in pages["submit, already on file"]
    assert "⟦Thank you: the key works⟧" in pages["received, the key works"]
    assert "⟦Key received: we will check it shortly⟧" in pages["received, pending (CD2 down)"]


def test_every_customer_message_is_marked_for_translation(pseudo, northfield, make_credential, settings):
    key = make_credential(northfield)
    with translation.override(pseudo):
        texts = [
            taken_message(institution=northfield),
            *(
                forbidden_reason(kind)
                for kind in ("AccountNotOnboarded", "AccountDisabled", "RequestTypeForbidden", "")
            ),
            *(expiry_phrase(days) for days in (14, 1, 0, -1, -7)),
        ]
        for status in ("active", "pending_verification", "revoked", "invalid", "superseded", "lost"):
            key.status = status
            for by_link in (True, False):
                texts.append(already_have_message(existing=key, institution=northfield, by_link=by_link))
        form = SubmissionForm(data={}, today=dt.date(2027, 3, 14))
        form.is_valid()
        form.prepare_to_show_again()
        texts += [str(field.label) for field in form] + [str(f.help_text) for f in form if f.help_text]
        texts += [str(error) for errors in form.errors.values() for error in errors]

    leftovers = {
        text: untranslated_words(text, data=[*page_data(northfield, settings), key.hint], html=False) for text in texts
    }
    assert {text: words for text, words in leftovers.items() if words} == {}


def test_every_customer_mail_is_marked_for_translation(pseudo, northfield, make_credential, settings):
    key = make_credential(northfield, days=300)
    data = [*page_data(northfield, settings), key.hint, "Ada Admin"]

    samples = customer_mail_samples(institution=northfield, credential=key, language=pseudo)

    assert len(samples) == 15
    found = {}
    for sample in samples:
        for part, text, html in (
            ("subject", sample.subject, False),
            ("text", sample.text, False),
            ("html", sample.html, True),
        ):
            words = untranslated_words(text, data=data, html=html)
            if words:
                found[f"{sample.label}: {part}"] = words
    assert found == {}


# --------------------------------------------------------------------------
# French mails, Spanish pages, English staff
# --------------------------------------------------------------------------


# 16:00 UTC is 11:00 in Toronto, past REMINDERS_HOUR, and the same date in both zones.
REMINDER_MOMENT = dt.datetime(2027, 3, 1, 16, 0, tzinfo=dt.UTC)


@time_machine.travel(REMINDER_MOMENT, tick=False)
def test_a_french_institutions_reminder_arrives_in_french_with_its_lang(make_institution, make_credential, settings):
    settings.REGISTRY_SENDER_NAME = "EdPotential"
    laval = make_institution(name="Cégep de Laval", language="fr-ca", timezone="America/Toronto")
    Contact.objects.create(institution=laval, name="Aline Tremblay", email="aline@laval.example.ca")
    make_credential(laval, days=14)

    run = reminders_run()

    assert run.sent == 1
    [message] = mail.outbox
    html = message.alternatives[0][0]
    assert message.subject == "La clé Canvas Data 2 de Cégep de Laval expire dans 14 jours"
    assert "<strong>expire le lundi 15 mars 2027</strong>, dans 14 jours" in html
    assert message.from_email == "EdPotential <registry@localhost>"
    assert message.body.startswith("Bonjour Aline Tremblay,")
    assert "Comment créer la nouvelle clé" in message.body
    assert '<html lang="fr-CA">' in html
    assert "Transmettre la nouvelle clé</a>" in html
    assert "Hello" not in message.body + html and "expires" not in message.subject
    [(filename, calendar, _)] = message.attachments
    assert filename.endswith(".ics")
    assert "SUMMARY:La clé Canvas Data 2 de Cégep de Laval expire" in str(calendar)


@time_machine.travel(REMINDER_MOMENT, tick=False)
def test_an_english_institutions_mail_stays_english(make_institution, make_credential):
    school = make_institution(name="Harbour City Schools")
    Contact.objects.create(institution=school, name="Ana Souza", email="ana@harbour.example.edu")
    make_credential(school, days=14)

    reminders_run()

    [message] = mail.outbox
    assert message.body.startswith("Hello Ana Souza,")
    assert '<html lang="en-GB">' in message.alternatives[0][0]


def test_accept_language_es_gives_the_spanish_page(client, institution, isolated_cache):
    token = submission_link_create(institution=institution).token

    response = client.get(
        reverse("credentials:submit", kwargs={"token": token}), HTTP_ACCEPT_LANGUAGE="es-MX,es;q=0.9,en;q=0.5"
    )

    body = response.content.decode()
    assert response.status_code == 200
    assert response["Content-Language"] == "es"
    assert '<html lang="es">' in body
    assert "Clave de Canvas Data 2 de Northfield University</h1>" in body
    assert "Verificar y enviar la clave" in body
    assert "ID de cliente (Client ID)" in body  # the form's label, from Python
    assert "Check and send the key" not in body


def test_a_french_browser_gets_canadian_french_and_an_unknown_one_english(client, institution, isolated_cache):
    url = reverse("credentials:submit", kwargs={"token": submission_link_create(institution=institution).token})

    french = client.get(url, HTTP_ACCEPT_LANGUAGE="fr-FR,fr;q=0.9").content.decode()
    german = client.get(url, HTTP_ACCEPT_LANGUAGE="de-DE").content.decode()

    assert '<html lang="fr-CA">' in french and "Vérifier et envoyer la clé" in french
    assert '<html lang="en-GB">' in german and "Check and send the key" in german


def test_the_switcher_sets_the_language_and_returns_to_the_page(client, institution, isolated_cache, settings):
    url = reverse("credentials:submit", kwargs={"token": submission_link_create(institution=institution).token})
    page = client.get(url).content.decode()
    assert 'action="/i18n/setlang/"' in page
    assert '<label for="language-choice">Language</label>' in page
    assert '<option value="es" lang="es">Español</option>' in page

    response = client.post(reverse("set_language"), data={"language": "es", "next": url})

    assert response.status_code == 302 and response["Location"] == url
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "es"
    assert "Verificar y enviar la clave" in client.get(url, HTTP_ACCEPT_LANGUAGE="fr").content.decode()


def test_the_staff_site_stays_english_whatever_the_browser_asks(admin_client):
    response = admin_client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE="fr-CA,fr")

    assert response.status_code == 200
    assert response["Content-Language"] == "en-gb"
    assert 'lang="en-gb"' in response.content.decode()


@pytest.mark.parametrize(
    ("language", "day", "weekday", "moment", "month"),
    [
        ("en-gb", "14 Mar 2027", "Sunday 14 Mar 2027", "14 Mar 2027, 07:30", "Mar 2027"),
        ("fr-ca", "14 mars 2027", "dimanche 14 mars 2027", "14 mars 2027, 07:30", "mars 2027"),
        ("es", "14 de marzo de 2027", "domingo 14 de marzo de 2027", "14 de marzo de 2027, 07:30", "marzo de 2027"),
    ],
)
def test_customer_dates_are_written_as_their_language_writes_them(language, day, weekday, moment, month):
    date = dt.date(2027, 3, 14)
    instant = dt.datetime(2027, 3, 14, 7, 30, tzinfo=dt.UTC)
    with translation.override(language):
        assert formatting.format_day(date) == day
        assert formatting.format_weekday(date) == weekday
        assert formatting.format_moment(instant, "UTC") == moment
        assert formatting.format_month(date) == month
