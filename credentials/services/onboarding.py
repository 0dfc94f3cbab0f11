"""Bulk onboarding: institutions, their contacts and account owners from a CSV or XLSX file.

Built on django-import-export (its admin gives the upload, the preview of
every row's changes and errors, and the confirm step). The rules:

- Every row is checked before anything is written: the preview is a dry run
  in a transaction that is rolled back, and a file with any error cannot be
  confirmed (all or nothing; the confirmed run is one transaction too).
- Re-runnable: a row matches an institution on its slug, else its Canvas
  domain; a row that changes nothing is skipped. Contacts are added when
  their address is new to the institution, never removed.
- Keys are never imported from files: a file with a key column is refused.
- The confirmed import is one audit event (who, what file, how many rows).
- The upload is read within limits (services/spreadsheets.py: at most
  IMPORT_MAX_ROWS rows and IMPORT_MAX_COLUMNS columns, the XLSX's unpacked
  size and declared dimension checked before parsing), CSV or XLSX only.

File columns: name, slug (made from the name when blank), canvas_domain,
status (default onboarding), timezone (default UTC), account_owner (a staff
user's username or email), contacts ("Ada Admin <ada@school.edu>; Bo <bo@school.edu>").
"""

from __future__ import annotations

from email.utils import getaddresses

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db.models import Q
from django.utils.text import slugify
from import_export import fields, resources, widgets

from credentials.models import AuditEvent
from credentials.services.audit import audit_record
from institutions.models import Contact, Institution

# Columns that would carry a key: a file with one is refused whole.
KEY_COLUMNS = {"client_id", "client id", "secret", "client_secret", "key", "api_key"}
IMPORT_COLUMNS = ("name", "slug", "canvas_domain", "status", "timezone", "account_owner", "contacts")


class StaffUserWidget(widgets.ForeignKeyWidget):
    """An account owner by username or email; only active staff users."""

    def __init__(self) -> None:
        super().__init__(get_user_model(), field="username")

    def clean(self, value, row=None, **kwargs):
        value = (value or "").strip()
        if not value:
            return None
        users = get_user_model()._default_manager.filter(is_staff=True, is_active=True)
        matches = list(users.filter(Q(username__iexact=value) | Q(email__iexact=value))[:2])
        if len(matches) != 1:
            raise ValueError(f"No single active staff user has the username or email {value!r}.")
        return matches[0]

    def render(self, value, obj=None, **kwargs):
        return value.get_username() if value else ""


def parse_contacts(text: str) -> list[tuple[str, str]]:
    """ "Ada Admin <ada@x.edu>; bo@x.edu" -> [("Ada Admin", "ada@x.edu"), ("bo@x.edu", "bo@x.edu")].

    Raises ValueError on an address that is not one (the row's error in the preview).
    """
    contacts = []
    for name, email in getaddresses([(text or "").replace(";", ",")]):
        email = email.strip()
        if not email:
            continue
        try:
            validate_email(email)
        except ValidationError:
            raise ValueError(f"{email!r} is not an email address.") from None
        contacts.append(((name or email).strip(), email))
    return contacts


class InstitutionResource(resources.ModelResource):
    account_owner = fields.Field(attribute="account_owner", column_name="account_owner", widget=StaffUserWidget())
    contacts = fields.Field(column_name="contacts", attribute=None)

    class Meta:
        model = Institution
        fields = IMPORT_COLUMNS
        import_id_fields = ("slug",)
        skip_unchanged = True
        report_skipped = True
        clean_model_instances = True
        use_transactions = True

    def before_import(self, dataset, **kwargs):
        headers = {(h or "").strip().lower() for h in dataset.headers or ()}
        if headers & KEY_COLUMNS:
            raise ValueError(
                "This file has a key column (" + ", ".join(sorted(headers & KEY_COLUMNS)) + "). Keys are never "
                "imported from files: remove the column; customers hand in keys through their submission link."
            )
        if "name" not in headers or "canvas_domain" not in headers:
            raise ValueError("The file needs at least the columns name and canvas_domain.")

    def before_import_row(self, row, **kwargs):
        for column in ("name", "slug", "canvas_domain", "status", "timezone", "account_owner", "contacts"):
            if column in row and isinstance(row[column], str):
                row[column] = row[column].strip()
        row["slug"] = row.get("slug") or slugify(row.get("name") or "")[:80]
        row["canvas_domain"] = (row.get("canvas_domain") or "").lower()
        row["status"] = row.get("status") or Institution.Status.ONBOARDING
        row["timezone"] = row.get("timezone") or "UTC"
        parse_contacts(row.get("contacts") or "")  # a bad address is this row's error, before anything is saved

    def get_instance(self, instance_loader, row):
        """The institution with this slug, else the one with this Canvas domain: a re-run updates, never duplicates."""
        found = Institution.objects.filter(slug=row.get("slug")).first()
        if found is None and row.get("canvas_domain"):
            found = Institution.objects.filter(canvas_domain=row["canvas_domain"]).order_by("pk").first()
            if found is not None:
                # Keep the stored slug: links, commands and the pipeline know it.
                row["slug"] = found.slug
        return found

    def _new_contacts(self, instance, row) -> list[tuple[str, str]]:
        wanted = parse_contacts(row.get("contacts") or "")
        if instance.pk is None:
            return wanted
        known = {
            email.lower() for email in Contact.objects.filter(institution=instance).values_list("email", flat=True)
        }
        return [(name, email) for name, email in wanted if email.lower() not in known]

    def import_instance(self, instance, row, **kwargs):
        super().import_instance(instance, row, **kwargs)
        self._pending_contacts = self._new_contacts(instance, row)

    def skip_row(self, instance, original, row, import_validation_errors=None):
        if getattr(self, "_pending_contacts", None):
            return False
        return super().skip_row(instance, original, row, import_validation_errors)

    def after_save_instance(self, instance, row, **kwargs):
        for name, email in self._pending_contacts:
            Contact.objects.create(institution=instance, name=name[:200], email=email)

    def dehydrate_contacts(self, institution) -> str:
        if institution.pk is None:
            return ""
        return "; ".join(f"{c.name} <{c.email}>" for c in institution.contacts.order_by("email"))

    def after_import(self, dataset, result, **kwargs):
        if kwargs.get("dry_run") or result.has_errors() or result.has_validation_errors():
            return
        user = kwargs.get("user")
        audit_record(
            kind=AuditEvent.Kind.IMPORT,
            actor=user,
            actor_label="" if getattr(user, "pk", None) else "import",
            reason=f"Imported {kwargs.get('file_name') or 'a file'}",
            detail={"file": str(kwargs.get("file_name") or "")[:200], **{k: v for k, v in result.totals.items()}},
        )


def institutions_import(*, dataset, actor, dry_run: bool, file_name: str = ""):
    """Import a tablib Dataset (the admin's door does the same through django-import-export); returns its Result."""
    return InstitutionResource().import_data(
        dataset, dry_run=dry_run, raise_errors=False, use_transactions=True, user=actor, file_name=file_name
    )
