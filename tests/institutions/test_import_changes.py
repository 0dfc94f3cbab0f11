"""Issue 25 item 4: the import shows every change, every error at once, and asks before it changes people.

Through the admin's real pages (upload, preview, confirm) as customer success:
a file that changes an owner and adds a contact shows both, before and after,
and writes nothing until the box is ticked; a file with several kinds of
error shows them all, by row and column; a file that changes nothing offers
no confirm button and leaves no audit; the audit names each changed field.
"""

from __future__ import annotations

import csv
import io

import openpyxl
import pytest
import tablib
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from credentials.models import AuditEvent
from credentials.services.onboarding import institutions_import
from institutions.models import Contact, Institution

pytestmark = pytest.mark.django_db

IMPORT_URL = reverse("admin:institutions_institution_import")
PROCESS_URL = reverse("admin:institutions_institution_process_import")
HEADER = ["name", "slug", "canvas_domain", "status", "timezone", "account_owner", "contacts"]


def csv_upload(rows: list[list[str]], header: list[str] = HEADER, name: str = "customers.csv") -> SimpleUploadedFile:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return SimpleUploadedFile(name, out.getvalue().encode(), content_type="text/csv")


@pytest.fixture
def importer(client, make_staff, verified_login):
    verified_login(client, make_staff("Customer success", username="cara"))
    return client


@pytest.fixture
def lakeside(make_institution, make_staff):
    owner = make_staff("Customer success", username="olga")
    institution = make_institution(
        name="Lakeside College",
        slug="lakeside",
        canvas_domain="lakeside.instructure.com",
        status=Institution.Status.ACTIVE,
        timezone="America/Chicago",
        account_owner=owner,
    )
    Contact.objects.create(institution=institution, name="Ada Admin", email="ada@lakeside.edu")
    return institution


def csv_format(client) -> str:
    form = client.get(IMPORT_URL).context["form"]
    return next(str(value) for value, label in form.fields["format"].choices if str(label).lower() == "csv")


def upload(client, upload_file):
    response = client.post(IMPORT_URL, {"import_file": upload_file, "format": csv_format(client)})
    assert response.status_code == 200
    return response


def confirm_data(response, **extra) -> dict:
    form = response.context["confirm_form"]
    return {**{name: value for name, value in form.initial.items() if value is not None}, **extra}


def test_an_owner_change_and_a_new_contact_show_before_and_after_and_need_the_explicit_choice(importer, lakeside):
    row = ["Lakeside College", "lakeside", "lakeside.instructure.com", "", "", "cara", "Bo Data <bo@lakeside.edu>"]

    preview = upload(importer, csv_upload([row]))

    result = preview.context["result"]
    (change,) = result.changing
    fields = {c.column: (c.before, c.after, c.needs_choice) for c in change.changes}
    assert fields == {
        "account_owner": ("olga", "cara", True),
        "contacts": ("Ada Admin <ada@lakeside.edu>", "Ada Admin <ada@lakeside.edu>; Bo Data <bo@lakeside.edu>", True),
    }
    page = preview.content.decode()
    assert "<del>olga</del>" in page and "<ins>cara</ins>" in page
    assert "<ins>Bo Data &lt;bo@lakeside.edu&gt;</ins>" in page
    assert "account owner changes from olga to cara" in page
    assert "1 new contact (Bo Data &lt;bo@lakeside.edu&gt;), who will receive its submission links" in page
    assert 'name="confirm_changes"' in page

    # Confirmed without the box: nothing written, the preview again with words saying what to tick.
    refused = importer.post(PROCESS_URL, confirm_data(preview))
    assert refused.status_code == 200
    assert "Tick “I have checked these changes to existing institutions”" in refused.content.decode()
    lakeside.refresh_from_db()
    assert lakeside.account_owner.username == "olga"
    assert list(lakeside.contacts.values_list("email", flat=True)) == ["ada@lakeside.edu"]
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.IMPORT).exists()

    # With the box ticked (the refused page's form, as the browser would post it again).
    done = importer.post(PROCESS_URL, confirm_data(refused, confirm_changes="on"))
    assert done.status_code == 302
    lakeside.refresh_from_db()
    assert lakeside.account_owner.username == "cara"
    assert sorted(lakeside.contacts.values_list("email", flat=True)) == ["ada@lakeside.edu", "bo@lakeside.edu"]
    # Blank status and time zone kept what Lakeside had.
    assert (lakeside.status, lakeside.timezone) == ("active", "America/Chicago")
    (event,) = AuditEvent.objects.filter(kind=AuditEvent.Kind.IMPORT)
    assert event.actor.username == "cara"
    (entry,) = event.detail["institutions"]
    assert entry["institution"] == "lakeside" and entry["action"] == "update"
    assert entry["changes"]["account_owner"] == ["olga", "cara"]
    assert entry["contacts_added"] == ["Bo Data <bo@lakeside.edu>"]


def test_a_new_slug_with_another_institutions_canvas_domain_needs_the_choice_and_says_whose(importer, lakeside):
    row = ["Lakeside University", "lakeside-university", "lakeside.instructure.com", "", "", "", ""]

    preview = upload(importer, csv_upload([row]))

    (change,) = preview.context["result"].changing
    assert change.matched_by_domain == "lakeside-university" and change.slug == "lakeside"
    assert {c.column: (c.before, c.after) for c in change.changes} == {
        "name": ("Lakeside College", "Lakeside University")
    }
    page = preview.content.decode()
    assert "the slug &#x27;lakeside-university&#x27; is new, but the Canvas domain lakeside.instructure.com" in page
    importer.post(PROCESS_URL, confirm_data(preview))
    lakeside.refresh_from_db()
    assert lakeside.name == "Lakeside College"


def test_the_confirmed_run_refuses_when_the_institutions_changed_since_the_preview(importer, lakeside):
    row = ["Lakeside College", "lakeside", "lakeside.instructure.com", "paused", "", "", ""]
    preview = upload(importer, csv_upload([row]))
    assert not preview.context["result"].choices  # a status change needs no box
    Contact.objects.create(institution=lakeside, name="Cy", email="cy@lakeside.edu")
    Institution.objects.filter(pk=lakeside.pk).update(name="Lakeside Community College")

    refused = importer.post(PROCESS_URL, confirm_data(preview))

    assert "the institutions changed since your preview" in refused.content.decode()
    lakeside.refresh_from_db()
    assert lakeside.status == "active"


def test_three_kinds_of_error_are_shown_at_once_by_row_and_column(importer, lakeside):
    rows = [
        ["Good College", "good", "good.instructure.com", "active", "Europe/London", "cara", "ok@good.edu"],
        ["Bad Contact College", "bad-contact", "badcontact.instructure.com", "", "", "", "Ann <not-an-address>"],
        ["Bad Owner College", "bad-owner", "badowner.instructure.com", "", "", "nobody-here", ""],
        ["Bad Status College", "bad-status", "https://badstatus.example/", "activ", "Mars/Olympus", "", ""],
    ]

    response = upload(importer, csv_upload(rows, header=[*HEADER, "phone"]))

    problems = [(p.row, p.column) for p in response.context["result"].problems]
    assert problems == [
        (None, "phone"),
        (3, "contacts"),
        (4, "account_owner"),
        (5, "canvas_domain"),
        (5, "status"),
        (5, "timezone"),
    ]
    page = response.content.decode()
    assert "6 problems in customers.csv: nothing was imported" in page
    for words in (
        "The import reads no column &#x27;phone&#x27;",
        "&#x27;not-an-address&#x27; is not an email address",
        "No single active staff member has the username or email &#x27;nobody-here&#x27;",
        "&#x27;activ&#x27; is not a status: use one of onboarding, active, paused, offboarded.",
        "Enter the Canvas host name only",
        "&#x27;Mars/Olympus&#x27; is not a time zone name",
    ):
        assert words in page
    assert response.context.get("confirm_form") is None and 'name="confirm"' not in page
    assert not Institution.objects.filter(slug="good").exists()


def test_a_repeated_slug_or_canvas_domain_in_one_file_names_the_earlier_row(importer):
    rows = [
        ["One", "same", "one.instructure.com", "", "", "", ""],
        ["Two", "same", "two.instructure.com", "", "", "", ""],
        ["Three", "three", "one.instructure.com", "", "", "", ""],
    ]
    problems = upload(importer, csv_upload(rows)).context["result"].problems
    assert [(p.row, p.column, p.message) for p in problems] == [
        (3, "slug", "Row 2 has the same slug: one row per institution."),
        (4, "canvas_domain", "Row 2 has the same canvas domain: one row per institution."),
    ]


def test_error_rows_are_numbered_as_the_spreadsheet_shows_them_blank_rows_included(importer):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(HEADER)
    sheet.append(["Fine", "fine", "fine.instructure.com"])
    sheet.append([])
    sheet.append([])
    sheet.append(["Broken", "broken", "not a domain"])
    out = io.BytesIO()
    book.save(out)
    form = importer.get(IMPORT_URL).context["form"]
    xlsx = next(str(v) for v, label in form.fields["format"].choices if str(label).lower() == "xlsx")
    upload_file = SimpleUploadedFile("c.xlsx", out.getvalue())

    response = importer.post(IMPORT_URL, {"import_file": upload_file, "format": xlsx})

    assert [(p.row, p.column) for p in response.context["result"].problems] == [(5, "canvas_domain")]


def test_a_file_that_changes_nothing_offers_no_confirm_button_and_leaves_no_audit(importer, lakeside):
    row = [
        "Lakeside College",
        "lakeside",
        "lakeside.instructure.com",
        "active",
        "America/Chicago",
        "olga",
        "ada@lakeside.edu",
    ]

    response = upload(importer, csv_upload([row]))

    page = response.content.decode()
    assert response.context["confirm_form"] is None
    assert "Nothing to import: every row of this file matches what is stored" in page
    assert 'name="confirm"' not in page
    # Confirming it anyway (another door, or a forged post) writes and audits nothing.
    dataset = tablib.Dataset(row, headers=HEADER)
    result = institutions_import(dataset=dataset, actor=None, dry_run=False, confirm_changes=True)
    assert not result.has_errors() and result.totals["skip"] == 1
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.IMPORT).exists()


def test_the_page_documents_every_column_and_offers_templates_that_import_cleanly(importer):
    page = importer.get(IMPORT_URL)
    text = page.content.decode()
    for column in HEADER:
        assert f"<code>{column}</code>" in text
    assert "Name &lt;email&gt;, separated by semicolons" in text
    assert "One of onboarding, active, paused, offboarded" in text

    csv_template = importer.get(reverse("admin:institutions_institution_import_template", args=["csv"]))
    assert csv_template.status_code == 200 and "attachment" in csv_template["Content-Disposition"]
    assert csv_template.content.decode().splitlines()[0] == ",".join(HEADER)
    xlsx_template = importer.get(reverse("admin:institutions_institution_import_template", args=["xlsx"]))
    sheet = openpyxl.load_workbook(io.BytesIO(xlsx_template.content)).active
    assert [cell.value for cell in sheet[1]] == HEADER

    # The example row previews as one new institution, without a single error.
    preview = upload(importer, SimpleUploadedFile("t.csv", csv_template.content, content_type="text/csv"))
    result = preview.context["result"]
    assert result.problems == [] and [p.action for p in result.changing] == ["new"]


def test_a_viewer_gets_no_template(client, make_staff, verified_login):
    verified_login(client, make_staff("Viewer"))
    assert client.get(reverse("admin:institutions_institution_import_template", args=["csv"])).status_code == 403


def test_a_contact_named_twice_in_a_cell_or_in_another_case_is_added_once(make_institution):
    existing = make_institution(slug="twice", canvas_domain="twice.instructure.com")
    Contact.objects.create(institution=existing, name="Ada", email="ada@twice.edu")
    dataset = tablib.Dataset(headers=["name", "slug", "canvas_domain", "contacts"])
    dataset.append([existing.name, "twice", "twice.instructure.com", "ADA@twice.edu; Bo <bo@twice.edu>; BO@TWICE.EDU"])

    result = institutions_import(dataset=dataset, actor=None, dry_run=False, confirm_changes=True)

    assert not result.has_errors() and not result.has_validation_errors(), result.problems
    assert sorted(existing.contacts.values_list("email", flat=True)) == ["ada@twice.edu", "bo@twice.edu"]
