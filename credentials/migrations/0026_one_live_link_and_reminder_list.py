"""One live submission link per institution, and the reminder list's export permission and order.

Links: each institution's older open links (neither used nor revoked) are
ended in favour of its newest, which they name (superseded_by), before the
constraint one_open_link_per_institution is added. Reminders: the list's
newest-first order gets an index; "Can export the reminder list" goes to
the roles that may already export the institution list (Customer success,
Data engineer).
"""

import django.db.models.deletion
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations, models
from django.utils import timezone

EXPORT_REMINDERS = "export_reminders"
ROLES_THAT_EXPORT = ("Customer success", "Data engineer")


def end_older_open_links(apps, schema_editor):
    SubmissionLink = apps.get_model("credentials", "SubmissionLink")
    now = timezone.now()
    newest = {}
    open_links = SubmissionLink.objects.filter(revoked_at__isnull=True, used_at__isnull=True)
    for pk, institution_id in open_links.order_by("institution_id", "-created_at", "-pk").values_list(
        "pk", "institution_id"
    ):
        if institution_id not in newest:
            newest[institution_id] = pk
        else:
            SubmissionLink.objects.filter(pk=pk).update(revoked_at=now, superseded_by_id=newest[institution_id])


def grant_export(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    permission = Permission.objects.get(content_type__app_label="credentials", codename=EXPORT_REMINDERS)
    for group in Group.objects.filter(name__in=ROLES_THAT_EXPORT):
        group.permissions.add(permission)


def revoke_export(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    Permission.objects.filter(content_type__app_label="credentials", codename=EXPORT_REMINDERS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("credentials", "0025_notice_kinds_merged"),
        ("institutions", "0008_key_state_lost"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="reminderlog",
            options={
                "verbose_name": "reminder",
                "verbose_name_plural": "reminders",
                "ordering": ("-claimed_at", "-id"),
                "permissions": [
                    ("send_reminder", "Can send a key's expiry reminder now"),
                    ("export_reminders", "Can export the reminder list (audited)"),
                ],
            },
        ),
        migrations.AddField(
            model_name="submissionlink",
            name="superseded_by",
            field=models.ForeignKey(
                blank=True,
                help_text="The newer link that ended this one.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="credentials.submissionlink",
            ),
        ),
        migrations.AddIndex(
            model_name="reminderlog",
            index=models.Index(fields=["-claimed_at", "-id"], name="reminder_claimed_newest"),
        ),
        migrations.RunPython(end_older_open_links, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="submissionlink",
            constraint=models.UniqueConstraint(
                condition=models.Q(("revoked_at__isnull", True), ("used_at__isnull", True)),
                fields=("institution",),
                name="one_open_link_per_institution",
            ),
        ),
        migrations.RunPython(grant_export, revoke_export),
    ]
