"""The Client ID's blind index and the database rule "one Client ID, one institution"; why a key is pending.

Existing rows are indexed by decrypting client_id with the configured
FERNET_KEYS and hashing it under CLIENT_ID_INDEX_KEY. The constraint is added
first (every index is still NULL, so it holds) and the rows are filled
oldest first: the first row of each Client ID keeps the constraint, any later
row with the same Client ID is kept as it was but flagged
client_id_index_duplicate, which exempts it. Nothing is merged or deleted:
the system check credentials.W002 lists Client IDs on file for more than one
institution for staff to sort out. A row no key decrypts keeps a NULL index
(the check credentials.W001 already reports it).
"""

from django.db import migrations, models

from credentials.fields import DecryptionError, client_id_index, decrypt_str

BATCH = 500


def fill_index(apps, schema_editor):
    Credential = apps.get_model("credentials", "CD2Credential")
    table = schema_editor.connection.ops.quote_name(Credential._meta.db_table)
    seen: set[str] = set()
    last_pk = 0
    while True:
        # The ciphertext as stored, decrypted row by row: one row no key
        # decrypts must not stop the others (the ORM would decrypt the whole
        # batch at fetch time). Oldest first, so the row that keeps the
        # constraint is the first one stored.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, client_id FROM {table} WHERE id > %s ORDER BY id LIMIT %s",  # noqa: S608  # nosec B608
                [last_pk, BATCH],
            )
            rows = cursor.fetchall()
        if not rows:
            break
        last_pk = rows[-1][0]
        for pk, token in rows:
            try:
                index = client_id_index(decrypt_str(token, what="client_id"))
            except DecryptionError:
                continue
            duplicate = index in seen
            seen.add(index)
            Credential.objects.filter(pk=pk).update(client_id_index=index, client_id_index_duplicate=duplicate)
    # Before this migration a key was stored pending only when the gateway
    # could not answer.
    Credential.objects.filter(status="pending_verification", pending_reason="").update(pending_reason="unavailable")


def clear_index(apps, schema_editor):
    apps.get_model("credentials", "CD2Credential").objects.update(client_id_index=None, client_id_index_duplicate=False)


class Migration(migrations.Migration):
    dependencies = [("credentials", "0006_last_pulled")]

    operations = [
        migrations.AddField(
            model_name="cd2credential",
            name="client_id_index",
            field=models.CharField(blank=True, editable=False, max_length=64, null=True),
        ),
        migrations.AddField(
            model_name="cd2credential",
            name="client_id_index_duplicate",
            field=models.BooleanField(db_default=False, default=False, editable=False),
        ),
        migrations.AddField(
            model_name="cd2credential",
            name="pending_reason",
            field=models.CharField(
                blank=True,
                choices=[
                    ("not_enabled", "Canvas Data 2 not enabled (403)"),
                    ("maintenance", "Account under maintenance at Instructure (403)"),
                    ("unavailable", "Gateway unavailable"),
                ],
                db_default="",
                default="",
                help_text="Why a pending key waits for its check; decides when it is checked again and what we "
                "tell the customer.",
                max_length=12,
            ),
        ),
        migrations.AddConstraint(
            model_name="cd2credential",
            constraint=models.UniqueConstraint(
                condition=models.Q(("client_id_index_duplicate", False)),
                fields=("client_id_index",),
                name="one_row_per_client_id",
            ),
        ),
        migrations.RunPython(fill_index, clear_index),
    ]
