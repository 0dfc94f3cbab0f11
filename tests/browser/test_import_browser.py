"""In Chromium, as customer success: the import shows every change before it writes, and every error at once.

Issue 25 item 4: the page documents the columns with templates to download; a
file that changes an existing institution's owner and contacts and matches
another by Canvas domain shows each field before and after, is refused
without the explicit choice (in words saying what to tick) and imported with
it; a file with several kinds of error shows them all, by row and column.
Screenshots of both pages go to SHOTS_DIR when it is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client

from credentials.models import AuditEvent
from institutions.models import Contact, Institution
from tests.security.test_csp_browser import chromium, open_watched

HEADER = "name,slug,canvas_domain,status,timezone,account_owner,contacts\n"
CHANGES = HEADER + (
    "Lakeside College,lakeside,lakeside.instructure.com,,,cara,"
    '"Ada Admin <ada@lakeside.edu>; Bo Data <bo@lakeside.edu>"\n'
    "Northfield University,northfield-university,northfield.instructure.com,,,,\n"
    "Maple Ridge College,maple-ridge,mapleridge.instructure.com,active,America/Denver,olga,\n"
    "Harbor Technical Institute,harbor-tech,harbor.instructure.com,onboarding,Pacific/Honolulu,cara,"
    '"Hana <hana@harbor.edu>"\n'
)
ERRORS = (
    HEADER.rstrip("\n")
    + ",phone\n"
    + "Good College,good,good.instructure.com,,,,ok@good.edu,\n"
    + 'Bad Contact College,bad-contact,badcontact.instructure.com,,,,"Ann <not-an-address>",\n'
    + "Bad Owner College,bad-owner,badowner.instructure.com,,,nobody-here,,\n"
    + "Bad Status College,bad-status,https://badstatus.example/,activ,Mars/Olympus,,,\n"
)


def shot(page, name: str) -> None:
    folder = os.environ.get("SHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def upload(page, live_server, name: str, body: str) -> None:
    page.goto(live_server.url + "/admin/institutions/institution/import/")
    page.set_input_files("input[name=import_file]", {"name": name, "mimeType": "text/csv", "buffer": body.encode()})
    page.select_option("select[name=format]", label="csv")
    with page.expect_navigation():
        page.click("input[type=submit][value='Check the file']")


@pytest.mark.django_db(transaction=True)
def test_customer_success_sees_each_change_and_confirms_the_ones_that_reach_people(
    live_server, make_staff, make_institution, verified_login
):
    olga = make_staff("Customer success", username="olga")
    lakeside = make_institution(
        name="Lakeside College", slug="lakeside", canvas_domain="lakeside.instructure.com", account_owner=olga
    )
    Contact.objects.create(institution=lakeside, name="Ada Admin", email="ada@lakeside.edu")
    make_institution(name="Northfield College", slug="northfield", canvas_domain="northfield.instructure.com")
    make_institution(
        name="Maple Ridge College",
        slug="maple-ridge",
        canvas_domain="mapleridge.instructure.com",
        timezone="America/Denver",
        account_owner=olga,
    )
    client = verified_login(Client(), make_staff("Customer success", username="cara"))
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value

    with chromium() as browser:
        page, console = open_watched(browser, live_server, cookie)
        missing: list[str] = []
        page.on("response", lambda r: missing.append(r.url) if r.status >= 400 and "favicon" not in r.url else None)
        page.set_viewport_size({"width": 1366, "height": 900})
        page.goto(live_server.url + "/admin/institutions/institution/import/")
        guide = page.locator("#import-guide")
        assert "Name <email>, separated by semicolons" in guide.inner_text()
        assert page.locator("a.import-template", has_text="XLSX").is_visible()

        upload(page, live_server, "customers.csv", CHANGES)

        heading = page.locator("#import-preview h2").inner_text()
        assert heading == "Preview: 3 institutions to import, 1 unchanged"
        lake = page.locator("tbody.import-changes__row[data-row='2']")
        owner = lake.locator("tr", has_text="account_owner")
        assert owner.locator("td.import-before").inner_text() == "olga"
        assert owner.locator("td.import-after").inner_text() == "cara"
        contacts = lake.locator("tr", has_text="contacts")
        assert contacts.locator("td.import-after ins").inner_text() == "Bo Data <bo@lakeside.edu>"
        north = page.locator("tbody.import-changes__row[data-row='3']")
        assert "Found by its Canvas domain" in north.inner_text()
        assert "Northfield College" in north.locator("td.import-before").inner_text()
        choices = page.locator(".import-choice__list li")
        assert choices.count() == 3  # Lakeside's owner, Lakeside's contact, Northfield's match
        shot(page, "import-preview.png")
        page.emulate_media(color_scheme="dark")
        shot(page, "import-preview-dark.png")
        page.emulate_media(color_scheme="light")

        # Confirmed without the choice: refused in words, the preview still there.
        with page.expect_navigation():
            page.click("input[name=confirm]")
        assert (
            "Tick “I have checked these changes to existing institutions”"
            in page.locator("#import-refusal").inner_text()
        )
        assert page.locator("#import-changes").is_visible()
        shot(page, "import-refused-without-the-choice.png")

        page.check("input[name=confirm_changes]")
        with page.expect_navigation():
            page.click("input[name=confirm]")
        assert page.url.endswith("/admin/institutions/institution/")
        assert "Import finished: 1 new, 2 updated" in page.locator("ul.messagelist").inner_text()

        upload(page, live_server, "broken.csv", ERRORS)
        problems = page.locator("#import-problems tbody tr")
        assert page.locator("#import-problems h2").inner_text().startswith("6 problems in broken.csv")
        assert [problems.nth(i).locator("td").first.inner_text() for i in range(problems.count())] == [
            "The file",
            "3",
            "4",
            "5",
            "5",
            "5",
        ]
        assert page.locator("input[name=confirm]").count() == 0
        shot(page, "import-errors.png")
        # Every stylesheet and script loaded (the browser's own favicon request aside), nothing blocked by the CSP.
        assert missing == [] and [m for m in console if "404" not in m] == []
        assert page.evaluate("window.__csp") == []

    lakeside.refresh_from_db()
    assert lakeside.account_owner.username == "cara"
    assert sorted(lakeside.contacts.values_list("email", flat=True)) == ["ada@lakeside.edu", "bo@lakeside.edu"]
    assert Institution.objects.get(slug="northfield").name == "Northfield University"
    assert Institution.objects.filter(slug="harbor-tech").exists()
    assert not Institution.objects.filter(slug="good").exists()
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.IMPORT).count() == 1
