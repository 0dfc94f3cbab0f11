"""Bulk onboarding: institutions, their contacts and account owners from a CSV or XLSX file.

Built on django-import-export (its admin gives the upload, the dry run and
the confirm step). The rules:

- Every row is checked before anything is written: the preview is a dry run
  in a transaction that is rolled back, and a file with any error cannot be
  confirmed (all or nothing; the confirmed run is one transaction too).
- Every error of the file is reported at once, by row (as the spreadsheet
  numbers it) and column: the file's own (its columns) and each row's, of
  every kind (`ImportResult.problems`).
- The preview shows, per row, each field that will change, before and after,
  contacts included (`ImportResult.previews`).
- Re-runnable: a row matches an institution on its slug, else its Canvas
  domain; a row that changes nothing is skipped. Contacts are added when
  their address is new to the institution, never removed.
- A change that reaches people or renames a customer needs the staff
  member's explicit choice (`confirm_changes`): an existing institution's
  account owner changes, it gets new contacts (who will receive its links
  and reminders), or a row matched it by Canvas domain rather than slug.
  The confirmed run also refuses when its changes differ from the preview's
  (`changes_digest`): someone changed an institution in between.
- Keys are never imported from files: a file with a key column is refused.
- A confirmed import that changes something is one audit event naming each
  changed field, before and after; one that changes nothing is not audited.
- The upload is read within limits (services/spreadsheets.py: at most
  IMPORT_MAX_ROWS rows and IMPORT_MAX_COLUMNS columns, the XLSX's unpacked
  size and declared dimension checked before parsing), CSV or XLSX only.

The columns and their formats are IMPORT_GUIDE (the import page shows it;
`import_template` writes a file with them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from email.utils import getaddresses

import tablib
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import validate_email
from django.db.models import Q
from django.utils.text import slugify
from import_export import fields, resources, widgets
from import_export.results import Result

from credentials.models import AuditEvent
from credentials.services.audit import audit_record
from institutions.models import Contact, Institution, email_for_storage, email_key

# Columns that would carry a key: a file with one is refused whole.
KEY_COLUMNS = {"client_id", "client id", "secret", "client_secret", "key", "api_key"}
IMPORT_COLUMNS = ("name", "slug", "canvas_domain", "status", "timezone", "account_owner", "contacts")
REQUIRED_COLUMNS = ("name", "canvas_domain")
# What a blank cell gives a new institution; an existing one keeps its own value.
BLANK_MEANS = {"status": Institution.Status.ONBOARDING.value, "timezone": "UTC", "account_owner": ""}


@dataclass(frozen=True)
class ImportColumn:
    name: str
    required: bool
    format: str
    example: str


def _status_values() -> str:
    return ", ".join(Institution.Status.values)


IMPORT_GUIDE = (
    ImportColumn("name", True, "The institution's name, as staff and customers read it.", "Lakeside College"),
    ImportColumn(
        "slug",
        False,
        "Lower-case letters, digits and hyphens. An existing institution is found by its slug. "
        "Blank or no column: made from the name.",
        "lakeside-college",
    ),
    ImportColumn(
        "canvas_domain",
        True,
        "The Canvas host name only: no https://, no path. A row whose slug is new but whose Canvas domain is "
        "an existing institution's updates that institution (you are asked to confirm it).",
        "lakeside.instructure.com",
    ),
    ImportColumn(
        "status",
        False,
        f"One of {_status_values()}. Blank: onboarding for a new institution; an existing one keeps its status.",
        "onboarding",
    ),
    ImportColumn(
        "timezone",
        False,
        "An IANA time zone name, for the dates in the institution's mail. Blank: UTC for a new institution; an "
        "existing one keeps its zone.",
        "America/Chicago",
    ),
    ImportColumn(
        "account_owner",
        False,
        "The username or email address of an active staff member. Blank: a new institution has no owner; an "
        "existing one keeps its owner (remove an owner on the institution's page).",
        "cara",
    ),
    ImportColumn(
        "contacts",
        False,
        "Name <email>, separated by semicolons; a bare address will do. Contacts new to the institution are "
        "added and receive its submission links and reminders; none is removed.",
        "Ada Admin <ada@lakeside.edu>; it@lakeside.edu",
    ),
)


def import_template(*, file_format: str) -> bytes:
    """A file with the import's columns and one example row, as "csv" or "xlsx"."""
    dataset = tablib.Dataset(headers=[column.name for column in IMPORT_GUIDE], title="Institutions")
    dataset.append([column.example for column in IMPORT_GUIDE])
    if file_format == "csv":
        return dataset.export("csv").encode("utf-8")
    if file_format == "xlsx":
        return dataset.export("xlsx")
    raise ValueError(f"No template as {file_format!r}: csv or xlsx.")


def import_limits() -> dict[str, int]:
    return {
        "rows": settings.IMPORT_MAX_ROWS,
        "columns": settings.IMPORT_MAX_COLUMNS,
        "cell_characters": settings.IMPORT_MAX_CELL_CHARACTERS,
    }


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
            raise ValueError(
                f"No single active staff member has the username or email {value!r}. "
                "Use a staff member's username or email address, or leave it blank."
            )
        return matches[0]

    def render(self, value, obj=None, **kwargs):
        return value.get_username() if value else ""


def parse_contacts(text: str) -> list[tuple[str, str]]:
    """ "Ada Admin <ada@x.edu>; bo@x.edu" -> [("Ada Admin", "ada@x.edu"), ("bo@x.edu", "bo@x.edu")].

    Raises ValueError naming every address that is not one.
    """
    contacts, bad = [], []
    for name, email in getaddresses([(text or "").replace(";", ",")]):
        email = email.strip()
        if not email:
            continue
        try:
            validate_email(email)
        except ValidationError:
            bad.append(repr(email))
            continue
        contacts.append(((name or email).strip(), email))
    if bad:
        raise ValueError(
            f"{', '.join(bad)} {'is not an email address' if len(bad) == 1 else 'are not email addresses'}. "
            "Write contacts as Name <email>, separated by semicolons."
        )
    return contacts


def _contact_text(name: str, email: str) -> str:
    return email if name == email else f"{name} <{email}>"


# --------------------------------------------------------------------------
# What the page shows: every problem, every change
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportProblem:
    """One error of the file: its row as the spreadsheet numbers it (None: the file's columns) and column."""

    row: int | None
    column: str
    value: str
    message: str


@dataclass(frozen=True)
class FieldChange:
    column: str
    before: str
    after: str
    needs_choice: bool = False


@dataclass
class RowPreview:
    """What one row of the file does: to which institution, each field before and after, what needs a choice."""

    row: int
    institution: str
    slug: str
    pk: int | None
    action: str = ""  # new, update or skip (django-import-export's import types); blank: the row has errors
    changes: list[FieldChange] = field(default_factory=list)
    contacts_added: list[str] = field(default_factory=list)
    matched_by_domain: str = ""  # the file's slug, when the row matched another institution's Canvas domain
    choices: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "row": self.row,
            "institution": self.slug,
            "action": self.action,
            "changes": {c.column: [c.before, c.after] for c in self.changes},
            "contacts_added": self.contacts_added,
            "matched_by_canvas_domain": bool(self.matched_by_domain),
        }


class FileRefused(ValueError):
    """The file's columns cannot be imported; `problems` says each."""

    def __init__(self, problems: list[ImportProblem]) -> None:
        super().__init__(" ".join(p.message for p in problems))
        self.problems = problems


class ImportRefused(ValueError):
    """A confirmed run that may not write: the explicit choice is missing, or the changes are not the preview's."""


class ImportResult(Result):
    """django-import-export's Result, with the file's problems, each row's preview and what needs a choice."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.previews: list[RowPreview] = []
        self.file_rows: list[int] | None = None
        self.refusal = ""

    def file_row(self, number: int) -> int:
        """Row `number` of the data (from 1) as the spreadsheet numbers it (the header is row 1)."""
        if self.file_rows and 0 < number <= len(self.file_rows):
            return self.file_rows[number - 1]
        return number + 1

    @property
    def problems(self) -> list[ImportProblem]:
        """Every error of the file, the file's own first, then by row and column."""
        found: list[ImportProblem] = []
        for error in self.base_errors:
            if isinstance(error.error, FileRefused):
                found.extend(error.error.problems)
            elif not isinstance(error.error, ImportRefused):
                found.append(ImportProblem(None, "", "", str(error.error)))
        by_row: list[ImportProblem] = []
        for invalid in self.invalid_rows:
            values = dict(zip(self.diff_headers, invalid.values, strict=False))
            for column, messages in invalid.error_dict.items():
                label = "" if column == NON_FIELD_ERRORS else column
                value = values.get(label, "")
                for message in messages:
                    by_row.append(ImportProblem(self.file_row(invalid.number), label, _text(value), message))
        for error_row in self.error_rows:
            for error in error_row.errors:
                by_row.append(ImportProblem(self.file_row(error_row.number), "", "", str(error.error)))
        return found + sorted(by_row, key=lambda p: (p.row or 0, p.column))

    @property
    def changing(self) -> list[RowPreview]:
        return [p for p in self.previews if p.action in ("new", "update")]

    @property
    def unchanged(self) -> list[RowPreview]:
        return [p for p in self.previews if p.action == "skip"]

    @property
    def choices(self) -> list[str]:
        """What needs the staff member's explicit choice, in words, one per change."""
        return [choice for p in self.changing for choice in p.choices]

    @property
    def changes_digest(self) -> str:
        """A fingerprint of every change: the confirmed run must do what the preview showed."""
        summary = json.dumps([p.summary() for p in self.changing], sort_keys=True, default=str)
        return hashlib.sha256(summary.encode()).hexdigest()


def _text(value) -> str:
    if value in (None, "---"):
        return ""
    return str(value)


def _owner_text(user) -> str:
    return user.get_username() if user else ""


# --------------------------------------------------------------------------
# The resource
# --------------------------------------------------------------------------


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
        # Our preview (RowPreview) takes the place of the library's HTML diff of every column.
        skip_html_diff = True

    def get_result_class(self):
        return ImportResult

    # -- the file -----------------------------------------------------------

    def before_import(self, dataset, **kwargs):
        self._row_numbers = getattr(dataset, "row_numbers", None)
        self._previews: dict[int, RowPreview] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._unusable = False
        headers = [(h or "").strip() for h in dataset.headers or ()]
        if headers and headers != list(dataset.headers):
            dataset.headers = headers
        lowered = {h.lower() for h in headers}
        problems = []
        keys = sorted(lowered & KEY_COLUMNS)
        if keys:
            problems.append(
                ImportProblem(
                    None,
                    ", ".join(keys),
                    "",
                    "This file has a key column (" + ", ".join(keys) + "). Keys are never imported from files: "
                    "remove the column; customers hand in keys through their submission link.",
                )
            )
        for column in REQUIRED_COLUMNS:
            if column not in headers:
                problems.append(
                    ImportProblem(None, column, "", f"The file has no {column} column: add it (see the columns above).")
                )
                self._unusable = True
        unknown = [h for h in headers if h and h not in IMPORT_COLUMNS and h.lower() not in KEY_COLUMNS]
        for column in unknown:
            problems.append(
                ImportProblem(
                    None,
                    column,
                    "",
                    f"The import reads no column {column!r}: rename it to one of {', '.join(IMPORT_COLUMNS)}, "
                    "or remove it.",
                )
            )
        if "slug" not in headers:
            dataset.append_col([""] * len(dataset), header="slug")  # made from each row's name
        if problems:
            raise FileRefused(problems)

    def after_import(self, dataset, result, **kwargs):
        result.file_rows = self._row_numbers
        result.previews = [self._previews[number] for number in sorted(self._previews) if self._previews[number].action]
        if kwargs.get("dry_run") or result.has_errors() or result.has_validation_errors() or not result.changing:
            return
        if result.choices and not kwargs.get("confirm_changes"):
            result.refusal = (
                "Nothing was imported: this file changes existing institutions (below). Tick "
                "“I have checked these changes to existing institutions” to import it."
            )
            raise ImportRefused(result.refusal)
        expected = kwargs.get("changes_digest")
        if expected is not None and expected != result.changes_digest:
            result.refusal = (
                "Nothing was imported: the institutions changed since your preview (someone edited them, or "
                "another import ran). Check the changes below and confirm again."
            )
            raise ImportRefused(result.refusal)
        user = kwargs.get("user")
        totals = {kind: result.totals[kind] for kind in ("new", "update", "skip")}
        audit_record(
            kind=AuditEvent.Kind.IMPORT,
            actor=user,
            actor_label="" if getattr(user, "pk", None) else "import",
            reason=f"Imported {kwargs.get('file_name') or 'a file'}",
            detail={
                "file": str(kwargs.get("file_name") or "")[:200],
                **totals,
                "institutions": [p.summary() for p in result.changing],
            },
        )

    # -- each row -----------------------------------------------------------

    def import_row(self, row, instance_loader, **kwargs):
        if self._unusable:
            # Without a name or Canvas domain column every row would repeat the file's own error.
            row_result = self.get_row_result_class()()
            row_result.import_type = row_result.IMPORT_TYPE_SKIP
            return row_result
        return super().import_row(row, instance_loader, **kwargs)

    def before_import_row(self, row, **kwargs):
        for column in IMPORT_COLUMNS:
            if column in row and isinstance(row[column], str):
                row[column] = row[column].strip()
            elif column in row and row[column] is None:
                row[column] = ""
        row["slug"] = row.get("slug") or slugify(row.get("name") or "")[:80]
        row["canvas_domain"] = (row.get("canvas_domain") or "").lower()
        if row.get("status"):
            row["status"] = row["status"].lower()
        self._file_slug = row["slug"]
        self._matched_by_domain = False

    def get_instance(self, instance_loader, row):
        """The institution with this slug, else the one with this Canvas domain: a re-run updates, never duplicates."""
        found = Institution.objects.filter(slug=row.get("slug")).first()
        if found is None and row.get("canvas_domain"):
            found = Institution.objects.filter(canvas_domain=row["canvas_domain"]).order_by("pk").first()
            if found is not None:
                # Keep the stored slug: links, commands and the pipeline know it.
                row["slug"] = found.slug
                self._matched_by_domain = True
        return found

    def _snapshot(self, instance) -> dict[str, str]:
        return {
            "name": instance.name,
            "slug": instance.slug,
            "canvas_domain": instance.canvas_domain,
            "status": instance.status,
            "timezone": instance.timezone,
            "account_owner": _owner_text(instance.account_owner),
        }

    def import_instance(self, instance, row, **kwargs):
        new = instance.pk is None
        for column, default in BLANK_MEANS.items():
            if row.get(column):
                continue
            if new:
                row[column] = default
            else:
                row.pop(column, None)  # a blank cell keeps what an existing institution has
        before = {} if new else self._snapshot(instance)
        known = (
            []
            if new
            else [(c.name, c.email) for c in Contact.objects.filter(institution=instance).order_by("name", "email")]
        )
        errors: dict = {}
        try:
            super().import_instance(instance, row, **kwargs)
        except ValidationError as exc:
            errors = exc.update_error_dict(errors)
        number = kwargs.get("row_number") or 0
        file_row = self._file_row(number)
        self._check_row(row, errors, file_row)
        try:
            wanted = parse_contacts(row.get("contacts") or "")
        except ValueError as exc:
            errors.setdefault("contacts", []).append(str(exc))
            wanted = []
        # Compared as every address is (email_key); one contact per address, however often the cell names it.
        seen = {email_key(email) for _, email in known}
        self._pending_contacts = []
        for name, email in wanted:
            if email_key(email) not in seen:
                seen.add(email_key(email))
                self._pending_contacts.append((name, email_for_storage(email)))
        self._previews[number] = self._preview(instance, before, known, file_row)
        if errors:
            raise ValidationError(errors)

    def _file_row(self, number: int) -> int:
        if self._row_numbers and 0 < number <= len(self._row_numbers):
            return self._row_numbers[number - 1]
        return number + 1

    def _check_row(self, row, errors: dict, file_row: int) -> None:
        status = row.get("status")
        if "status" in row and "status" not in errors and status not in Institution.Status.values:
            errors["status"] = [f"{status!r} is not a status: use one of {_status_values()}."]
        for column in ("slug", "canvas_domain"):
            value = (row.get(column) or "").lower()
            if column == "slug":
                value = (self._file_slug or "").lower()
            if not value:
                continue
            earlier = self._seen.setdefault((column, value), file_row)
            if earlier != file_row:
                errors.setdefault(column, []).append(
                    f"Row {earlier} has the same {column.replace('_', ' ')}: one row per institution."
                )

    def _preview(self, instance, before: dict, known: list[tuple[str, str]], file_row: int) -> RowPreview:
        after = self._snapshot(instance)
        existing = bool(before)
        preview = RowPreview(row=file_row, institution=instance.name, slug=instance.slug, pk=instance.pk)
        for column in IMPORT_COLUMNS[:-1]:
            old, new = before.get(column, ""), after[column]
            if existing and old == new:
                continue
            if not existing and not new:
                continue
            owner_change = existing and column == "account_owner"
            preview.changes.append(FieldChange(column, old, new, needs_choice=owner_change))
            if owner_change:
                preview.choices.append(
                    f"Row {file_row}: {before['name']}’s account owner changes from {old or 'nobody'} "
                    f"to {new or 'nobody'}."
                )
        if self._pending_contacts:
            preview.contacts_added = [_contact_text(n, e) for n, e in self._pending_contacts]
            preview.changes.append(
                FieldChange(
                    "contacts",
                    "; ".join(_contact_text(n, e) for n, e in known),
                    "; ".join([*(_contact_text(n, e) for n, e in known), *preview.contacts_added]),
                    needs_choice=existing,
                )
            )
            if existing:
                preview.choices.append(
                    f"Row {file_row}: {before['name']} gets {len(self._pending_contacts)} new "
                    f"contact{'s' if len(self._pending_contacts) != 1 else ''} "
                    f"({', '.join(preview.contacts_added)}), who will receive its submission links and reminders."
                )
        if self._matched_by_domain:
            preview.matched_by_domain = self._file_slug
            preview.choices.append(
                f"Row {file_row}: the slug {self._file_slug!r} is new, but the Canvas domain "
                f"{instance.canvas_domain} is {before['name']}’s (slug {instance.slug!r}): the row updates "
                f"{before['name']} and keeps its slug. If the row is another institution, give it its own "
                "Canvas domain."
            )
        return preview

    def skip_row(self, instance, original, row, import_validation_errors=None):
        if getattr(self, "_pending_contacts", None):
            return False
        return super().skip_row(instance, original, row, import_validation_errors)

    def after_save_instance(self, instance, row, **kwargs):
        for name, email in self._pending_contacts:
            Contact.objects.create(institution=instance, name=name[:200], email=email)

    def after_import_row(self, row, row_result, **kwargs):
        preview = self._previews.get(kwargs.get("row_number") or 0)
        if preview is not None:
            preview.action = row_result.import_type
            preview.pk = row_result.object_id or preview.pk
            if preview.action == "skip":
                preview.changes, preview.choices = [], []

    def dehydrate_contacts(self, institution) -> str:
        if institution.pk is None:
            return ""
        return "; ".join(f"{c.name} <{c.email}>" for c in institution.contacts.order_by("email"))


def institutions_import(
    *,
    dataset,
    actor,
    dry_run: bool,
    file_name: str = "",
    confirm_changes: bool = False,
    changes_digest: str | None = None,
) -> ImportResult:
    """Import a tablib Dataset (the admin's door does the same through django-import-export); returns its Result.

    `confirm_changes` is the staff member's explicit choice for changes to
    existing institutions' owners and contacts and for matches by Canvas
    domain; `changes_digest`, the preview's, refuses a run that would do
    something else.
    """
    return InstitutionResource().import_data(
        dataset,
        dry_run=dry_run,
        raise_errors=False,
        use_transactions=True,
        user=actor,
        file_name=file_name,
        confirm_changes=confirm_changes,
        changes_digest=changes_digest,
    )
