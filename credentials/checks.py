"""System checks: the encryption configuration, and nothing ordered by ciphertext (run at start-up and by `check`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cryptography.fernet import InvalidToken
from django.apps import apps
from django.contrib import admin
from django.core import checks
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, F
from django.db.models.constants import LOOKUP_SEP

from credentials.fields import EncryptedTextField, build_fernets, get_multifernet

# Rows read per encrypted column: enough to catch a dropped key that most
# rows still need, few enough that start-up stays fast at any table size.
SAMPLE_ROWS = 20


@checks.register(checks.Tags.security)
def check_fernet_keys(app_configs=None, **kwargs):
    from django.conf import settings

    try:
        build_fernets(list(getattr(settings, "FERNET_KEYS", [])))
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="credentials.E001")]
    return []


def encrypted_columns():
    for model in apps.get_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, EncryptedTextField):
                yield model, field


# Not tagged "database": it must run at every start-up, not only on request.
@checks.register("encryption")
def check_stored_values_decrypt(app_configs=None, **kwargs):
    """Warn when sampled stored values cannot be read with the configured keys.

    Samples the oldest and newest rows of each encrypted column: a key that
    was dropped too early shows in the old rows, a wrong new key in the new.
    """
    if check_fernet_keys():
        return []  # the key error above says it all
    fernet = get_multifernet()
    warnings = []
    for model, field in encrypted_columns():
        table, column, pk = (
            connection.ops.quote_name(n) for n in (model._meta.db_table, field.column, model._meta.pk.column)
        )
        failed = set()
        try:
            # A savepoint, so a missing table does not poison an open transaction.
            with transaction.atomic(), connection.cursor() as cursor:
                for order in ("ASC", "DESC"):
                    # Names are quoted identifiers from our own models, never input.
                    cursor.execute(
                        f"SELECT {pk}, {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY {pk} {order} LIMIT %s",  # noqa: S608  # nosec B608
                        [SAMPLE_ROWS // 2],
                    )
                    for row_pk, token in cursor.fetchall():
                        try:
                            fernet.decrypt(token.encode())
                        except (InvalidToken, AttributeError):
                            failed.add(row_pk)
        except DatabaseError:
            continue  # not migrated yet: nothing stored to check
        if failed:
            warnings.append(
                checks.Warning(
                    f"{len(failed)} sampled value(s) in {model._meta.db_table}.{field.column} cannot be "
                    f"decrypted with the configured FERNET_KEYS.",
                    hint="Put the key they were written with back into FERNET_KEYS (after the newest), "
                    "then run `python manage.py rotate_encryption_keys`.",
                    id="credentials.W001",
                )
            )
    return warnings


# Not tagged "database" either: a Client ID on file for two institutions
# must show at every start-up until staff have sorted it out.
@checks.register("encryption")
def check_client_id_shared_between_institutions(app_configs=None, **kwargs):
    """Warn about Client IDs stored for more than one institution (found when migration 0005 indexed old rows).

    New rows cannot do this (the constraint one_row_per_client_id); rows
    from before it are kept, flagged, and listed here. The message names the
    institutions and the keys' hints, never the Client ID or its index.
    """
    model = apps.get_model("credentials", "CD2Credential")
    try:
        with transaction.atomic():
            shared = list(
                model.objects.filter(client_id_index__isnull=False)
                .values("client_id_index")
                .annotate(institutions=Count("institution", distinct=True))
                .filter(institutions__gt=1)
                .values_list("client_id_index", flat=True)
            )
            rows = list(
                model.objects.filter(client_id_index__in=shared)
                .order_by("client_id_index", "pk")
                .values_list("client_id_index", "institution__slug", "hint")
            )
    except DatabaseError:
        return []  # not migrated yet
    groups: dict[str, list[str]] = {}
    for index, slug, hint in rows:
        groups.setdefault(index, []).append(f"{slug} ({hint})")
    return [
        checks.Warning(
            "One Client ID is on file for several institutions: " + ", ".join(sorted(set(names))) + ".",
            hint="A key belongs to one institution. Ask which institution made it, revoke the other "
            "institutions' copies in the admin and send them a submission link for a key of their own.",
            id="credentials.W002",
        )
        for names in groups.values()
    ]


# ---------------------------------------------------------------------------
# Nothing orders, searches or filters by ciphertext
# ---------------------------------------------------------------------------
# Ciphertext order is random and equal values encrypt differently, so an
# ordering, a search or a filter on an EncryptedTextField is a mistake.
# Lookups refuse at run time (EncryptedTextField.get_lookup); ordering has no
# public hook, so every ordering Django is given in configuration is checked
# here, before the site starts. An `order_by()` written in code is not seen:
# review catches those.


PLAIN_ORDER = "Order by a column that is not encrypted (for a key: hint, submitted_at or pk)."


def encrypted_field_on_path(model, path: str) -> EncryptedTextField | None:
    """The encrypted field a lookup path from `model` reaches ("secret", "-credential__client_id"), if any."""
    opts = model._meta
    for name in path.lstrip("-").split(LOOKUP_SEP):
        try:
            field = opts.pk if name == "pk" else opts.get_field(name)
        except FieldDoesNotExist:
            return None  # a lookup or transform name, or a typo (Django's own checks report those)
        if isinstance(field, EncryptedTextField):
            return field
        if field.related_model is None:
            return None
        opts = field.related_model._meta
    return None


def _ordering_paths(item) -> Iterator[str]:
    """Field paths in one item of an ordering: "-name", F("name"), F("name").desc(), Lower("name")."""
    if isinstance(item, str):
        if item != "?":
            yield item
    elif isinstance(item, F):
        yield item.name
    elif hasattr(item, "get_source_expressions"):
        for source in item.get_source_expressions():
            yield from _ordering_paths(source)


def _encrypted_in(model, items: Iterable, *, strip: str = "") -> Iterator[tuple[str, EncryptedTextField]]:
    for item in items or ():
        for path in _ordering_paths(item):
            field = encrypted_field_on_path(model, path.lstrip(strip))
            if field is not None:
                yield path, field


def _field_label(field: EncryptedTextField) -> str:
    return f"{field.model._meta.label}.{field.name}"


def _sortable_columns(model_admin) -> Iterator:
    """What each sortable list_display column of `model_admin` orders by (a field path or an ordering)."""
    model = model_admin.model
    for column in model_admin.list_display:
        if model_admin.sortable_by is not None and column not in model_admin.sortable_by:
            continue
        if isinstance(column, str):
            if encrypted_field_on_path(model, column) is not None:
                yield column, column  # a field column sorts by itself
                continue
            attribute = getattr(model_admin, column, None) or getattr(model, column, None)
        else:
            attribute = column
        if isinstance(attribute, property):
            attribute = attribute.fget
        ordering = getattr(attribute, "admin_order_field", None)  # @admin.display(ordering=...)
        if ordering is not None:
            yield getattr(column, "__name__", column), ordering


def _model_admin_errors(model_admin) -> Iterator[checks.Error]:
    model, name = model_admin.model, type(model_admin).__qualname__
    for path, field in _encrypted_in(model, model_admin.ordering):
        yield checks.Error(
            f"{name}.ordering orders by {path!r}, the encrypted field {_field_label(field)}: "
            f"ciphertext order is random.",
            hint=PLAIN_ORDER,
            obj=type(model_admin),
            id="credentials.E012",
        )
    for column, ordering in _sortable_columns(model_admin):
        for path, field in _encrypted_in(model, [ordering]):
            yield checks.Error(
                f"{name}.list_display column {column!r} sorts by {path!r}, the encrypted field "
                f"{_field_label(field)}: ciphertext order is random.",
                hint="Sort the column by a plain column (@admin.display(ordering=...)), or leave it out of "
                "sortable_by.",
                obj=type(model_admin),
                id="credentials.E012",
            )
    for path, field in _encrypted_in(model, model_admin.search_fields, strip="^=@"):
        yield checks.Error(
            f"{name}.search_fields searches {path!r}, the encrypted field {_field_label(field)}: "
            f"ciphertext cannot be searched.",
            hint="Search a plain column (the key's hint) instead.",
            obj=type(model_admin),
            id="credentials.E013",
        )
    filters = [item[0] if isinstance(item, tuple | list) else item for item in model_admin.list_filter]
    for path, field in _encrypted_in(model, [item for item in filters if isinstance(item, str)]):
        yield checks.Error(
            f"{name}.list_filter filters by {path!r}, the encrypted field {_field_label(field)}: "
            f"ciphertext cannot be compared.",
            hint="Filter by a plain column.",
            obj=type(model_admin),
            id="credentials.E013",
        )
    for inline in model_admin.inlines:
        for path, field in _encrypted_in(inline.model, inline.ordering):
            yield checks.Error(
                f"{inline.__qualname__}.ordering (an inline of {name}) orders by {path!r}, the encrypted field "
                f"{_field_label(field)}: ciphertext order is random.",
                hint=PLAIN_ORDER,
                obj=inline,
                id="credentials.E012",
            )


@checks.register(checks.Tags.models, checks.Tags.admin)
def check_no_ordering_by_encrypted_fields(app_configs=None, **kwargs):
    """Refuse Meta.ordering, admin orderings, sortable columns, searches and filters on an encrypted field."""
    models = apps.get_models() if app_configs is None else [m for c in app_configs for m in c.get_models()]
    errors = []
    for model in models:
        for path, field in _encrypted_in(model, model._meta.ordering):
            errors.append(
                checks.Error(
                    f"{model._meta.label}.Meta.ordering orders by {path!r}, the encrypted field "
                    f"{_field_label(field)}: ciphertext order is random.",
                    hint=PLAIN_ORDER,
                    obj=model,
                    id="credentials.E011",
                )
            )
        if admin.site.is_registered(model):
            errors.extend(_model_admin_errors(admin.site.get_model_admin(model)))
    return errors
