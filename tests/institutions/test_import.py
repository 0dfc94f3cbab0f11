"""Bulk onboarding: preview every row's change and error, all or nothing, re-runnable, audited, no keys."""

from __future__ import annotations

import csv
import io

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
BAD_ROWS = {17: "not a domain", 99: "bad-email", 250: "no-such-owner", 321: "Mars/Olympus", 480: ""}


def rows(n: int = 500, *, bad: bool = False) -> list[dict]:
    out = []
    for i in range(n):
        row = {
            "name": f"Import College {i:03d}",
            "slug": f"import-college-{i:03d}",
            "canvas_domain": f"college{i:03d}.instructure.com",
            "status": "onboarding",
            "timezone": "America/Chicago",
            "account_owner": "cara",
            "contacts": f"Admin {i} <admin{i}@college{i:03d}.edu>; it{i}@college{i:03d}.edu",
        }
        if bad and i in BAD_ROWS:
            column = {17: "canvas_domain", 99: "contacts", 250: "account_owner", 321: "timezone", 480: "name"}[i]
            row[column] = BAD_ROWS[i]
        out.append(row)
    return out


def csv_file(data: list[dict], name: str = "customers.csv") -> SimpleUploadedFile:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(data[0]))
    writer.writeheader()
    writer.writerows(data)
    return SimpleUploadedFile(name, out.getvalue().encode(), content_type="text/csv")


@pytest.fixture
def importer(client, make_staff, verified_login):
    verified_login(client, make_staff("Customer success", username="cara"))
    return client


def csv_format(client) -> str:
    form = client.get(IMPORT_URL).context["form"]
    return next(str(value) for value, label in form.fields["format"].choices if str(label).lower() == "csv")


def preview(client, data: list[dict]):
    response = client.post(IMPORT_URL, {"import_file": csv_file(data), "format": csv_format(client)})
    assert response.status_code == 200
    return response


def test_500_rows_with_5_bad_show_every_error_write_nothing_then_import_once_and_rerun_as_no_change(importer):
    response = preview(importer, rows(bad=True))

    result = response.context["result"]
    invalid = {row.number for row in result.invalid_rows} | {number for number, _ in result.row_errors()}
    assert invalid == {i + 1 for i in BAD_ROWS}  # row numbers count from 1
    assert "confirm_form" not in response.context or response.context["confirm_form"] is None
    assert Institution.objects.count() == 0 and Contact.objects.count() == 0

    response = preview(importer, rows())
    result = response.context["result"]
    assert not result.has_errors() and not result.has_validation_errors()
    assert result.totals["new"] == 500
    assert Institution.objects.count() == 0  # the preview writes nothing
    confirm = response.context["confirm_form"]
    done = importer.post(PROCESS_URL, {**confirm.initial})
    assert done.status_code == 302
    assert Institution.objects.count() == 500 and Contact.objects.count() == 1000
    first = Institution.objects.get(slug="import-college-000")
    assert (first.account_owner.username, first.timezone, first.status) == ("cara", "America/Chicago", "onboarding")
    (event,) = AuditEvent.objects.filter(kind=AuditEvent.Kind.IMPORT)
    assert event.actor.username == "cara" and event.detail["new"] == 500

    result = preview(importer, rows()).context["result"]
    assert (result.totals["new"], result.totals["update"], result.totals["skip"]) == (0, 0, 500)


def test_a_row_matches_on_the_canvas_domain_when_the_slug_differs_and_only_new_contacts_are_added(make_institution):
    existing = make_institution(name="Old Name", slug="keep-me", canvas_domain="match.instructure.com")
    Contact.objects.create(institution=existing, name="Ada", email="ada@match.edu")
    dataset = tablib.Dataset(headers=["name", "slug", "canvas_domain", "contacts"])
    dataset.append(["New Name", "", "match.instructure.com", "ADA@match.edu; Bo <bo@match.edu>"])

    # A match by Canvas domain renames an existing institution and adds a contact: the explicit choice first.
    refused = institutions_import(dataset=dataset, actor=None, dry_run=False)
    assert refused.has_errors() and "Tick" in refused.refusal
    existing.refresh_from_db()
    assert existing.name == "Old Name" and existing.contacts.count() == 1

    result = institutions_import(dataset=dataset, actor=None, dry_run=False, confirm_changes=True)

    assert not result.has_errors() and not result.has_validation_errors(), result.invalid_rows
    existing.refresh_from_db()
    assert (existing.name, existing.slug) == ("New Name", "keep-me")
    assert sorted(existing.contacts.values_list("email", flat=True)) == ["ada@match.edu", "bo@match.edu"]
    assert Institution.objects.count() == 1


def test_a_file_with_a_key_column_is_refused_whole():
    dataset = tablib.Dataset(headers=["name", "canvas_domain", "client_id", "secret"])
    dataset.append(["Leaky College", "leaky.instructure.com", "us-east-1#x", "s3cret"])

    result = institutions_import(dataset=dataset, actor=None, dry_run=False)

    assert result.has_errors()
    assert "Keys are never imported" in str(result.base_errors[0].error)
    assert not Institution.objects.exists()


def test_a_viewer_cannot_import(client, make_staff, verified_login):
    verified_login(client, make_staff("Viewer"))
    assert client.get(IMPORT_URL).status_code == 403
