"""System checks for the encryption configuration (run at start-up and by `manage.py check`)."""

from __future__ import annotations

from cryptography.fernet import InvalidToken
from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection, transaction
from django.db.models import Count

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
