"""Fill the new state columns from the old text, and move the staff roles onto named permissions.

Before: a check's outcome was only text (last_verification, "rejected (401
...)"), a skipped reminder step was a "Skipped:" prefix in last_error, and
the roles borrowed permissions (add_reminderlog meant "send a reminder",
change_cd2credential meant "check" and "revoke"). Reversible: the backward
step puts the roles back on the borrowed permissions; the columns it leaves
(the previous code reads the text, which is kept).
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

VIEW = [
    "institutions.view_institution",
    "institutions.view_contact",
    "credentials.view_cd2credential",
    "credentials.view_submissionlink",
    "credentials.view_reminderlog",
    "credentials.view_auditevent",
]
INSTITUTION_EDITING = [
    "institutions.add_institution",
    "institutions.change_institution",
    "institutions.add_contact",
    "institutions.change_contact",
    "institutions.delete_contact",
    "institutions.export_institutions",
]
CUSTOMER_SUCCESS = VIEW + INSTITUTION_EDITING + [
    "credentials.send_submission_link",
    "credentials.send_reminder",
    "credentials.add_cd2credential",  # enter a key a customer shared another way
    "credentials.check_key",
    "credentials.revoke_key",
]
SECRETS = ["credentials.reveal_secret", "credentials.handoff_credential"]
DATA_ENGINEER = CUSTOMER_SUCCESS + SECRETS
ROLES = {"Viewer": VIEW, "Customer success": CUSTOMER_SUCCESS, "Data engineer": DATA_ENGINEER}

# The roles as 0002_roles made them, for the way back.
OLD_BORROWED = [
    "credentials.add_submissionlink",
    "credentials.change_submissionlink",
    "credentials.add_reminderlog",
    "credentials.add_cd2credential",
    "credentials.change_cd2credential",
]
OLD_ROLES = {
    "Viewer": VIEW,
    "Customer success": VIEW + INSTITUTION_EDITING + OLD_BORROWED,
    "Data engineer": VIEW + INSTITUTION_EDITING + OLD_BORROWED + SECRETS,
}

VERDICTS = ("ok", "rejected", "forbidden", "unavailable")


def _set_roles(apps, roles):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    for group_name, perms in roles.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        permissions = []
        for perm in perms:
            app_label, codename = perm.split(".")
            permissions.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(permissions)


def forward(apps, schema_editor):
    CD2Credential = apps.get_model("credentials", "CD2Credential")
    ReminderLog = apps.get_model("credentials", "ReminderLog")
    for verdict in VERDICTS:
        CD2Credential.objects.filter(last_verification__startswith=verdict).update(last_verdict=verdict)
    ReminderLog.objects.filter(sent_at__isnull=False).update(state="sent")
    ReminderLog.objects.filter(sent_at__isnull=True, failed_at__isnull=False).update(state="failed")
    ReminderLog.objects.filter(sent_at__isnull=True, failed_at__isnull=True, last_error__startswith="Skipped:").update(
        state="skipped"
    )
    _set_roles(apps, ROLES)


def backward(apps, schema_editor):
    ReminderLog = apps.get_model("credentials", "ReminderLog")
    # The old code knew a skipped step only by this prefix.
    for log in ReminderLog.objects.filter(state="skipped").exclude(last_error__startswith="Skipped:"):
        log.last_error = f"Skipped: {log.last_error}"[:500]
        log.save(update_fields=["last_error"])
    _set_roles(apps, OLD_ROLES)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("institutions", "0002_export_permission"),
        ("credentials", "0003_state_columns_and_named_permissions"),
    ]

    operations = [migrations.RunPython(forward, backward)]
