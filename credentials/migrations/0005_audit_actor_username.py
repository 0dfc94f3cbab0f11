"""Keep who did it for ever: the actor's username on every audit event, and staff with history undeletable.

Fills actor_username on existing rows from the user they point at. Before
this, deleting a user set actor to NULL, so rows already anonymised stay as
they are (their actor_label, if any, still reads).
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def fill_actor_username(apps, schema_editor):
    AuditEvent = apps.get_model("credentials", "AuditEvent")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    username = User._meta.get_field(getattr(User, "USERNAME_FIELD", "username")).attname
    AuditEvent.objects.filter(actor__isnull=False, actor_username="").update(
        actor_username=Subquery(User.objects.filter(pk=OuterRef("actor_id")).values(username)[:1])
    )


class Migration(migrations.Migration):
    dependencies = [
        ("credentials", "0004_fill_state_columns_and_move_roles"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="actor_username",
            field=models.CharField(
                blank=True, help_text="The staff user's username at the time, kept for ever.", max_length=150
            ),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="actor",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("reveal", "Secret revealed"),
                    ("export", "Export"),
                    ("handoff", "Hand-off to pipeline"),
                    ("submission", "Key submitted"),
                    ("link_created", "Submission link created"),
                    ("link_used", "Submission link used"),
                    ("link_revoked", "Submission link revoked"),
                    ("key_revoked", "Key revoked"),
                    ("key_invalid", "Key found invalid"),
                    ("key_rotation", "Encryption keys rotated"),
                    ("login_failed", "Admin login failed"),
                    ("login", "Admin login"),
                    ("handoff_refused", "Hand-off refused"),
                    ("2fa_reset", "Authenticator reset started"),
                    ("2fa_enrolled", "Authenticator enrolled"),
                    ("2fa_deleted", "Two-factor device deleted"),
                ],
                max_length=20,
            ),
        ),
        migrations.RunPython(fill_actor_username, migrations.RunPython.noop),
    ]
