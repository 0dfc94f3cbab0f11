"""Staff roles as groups: Viewer, Customer success, Data engineer.

Permissions are normally created after all migrations ran (post_migrate);
on a fresh database they do not exist yet here, so they are created first
with the same function Django uses. Re-running is safe: groups are updated
to hold exactly the listed permissions.
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
CUSTOMER_SUCCESS = VIEW + [
    "institutions.add_institution",
    "institutions.change_institution",
    "institutions.add_contact",
    "institutions.change_contact",
    "institutions.delete_contact",
    "institutions.export_institutions",
    # Send a submission link; enter a key a customer shared; check or revoke it.
    "credentials.add_submissionlink",
    "credentials.change_submissionlink",
    "credentials.add_reminderlog",
    "credentials.add_cd2credential",
    "credentials.change_cd2credential",
]
DATA_ENGINEER = CUSTOMER_SUCCESS + [
    "credentials.reveal_secret",
    "credentials.handoff_credential",
]
ROLES = {"Viewer": VIEW, "Customer success": CUSTOMER_SUCCESS, "Data engineer": DATA_ENGINEER}

# Not in a model's Meta: exporting is an act on the list, not on one model row.
EXTRA_PERMISSIONS = [("institutions", "institution", "export_institutions", "Can export the institution list (audited)")]


def create_roles(apps, schema_editor):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    for app_label, model, codename, name in EXTRA_PERMISSIONS:
        content_type, _ = ContentType.objects.get_or_create(app_label=app_label, model=model)
        Permission.objects.get_or_create(content_type=content_type, codename=codename, defaults={"name": name})
    for group_name, perms in ROLES.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        permissions = []
        for perm in perms:
            app_label, codename = perm.split(".")
            permissions.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group.permissions.set(permissions)


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()
    apps.get_model("auth", "Permission").objects.filter(
        codename__in=[codename for _, _, codename, _ in EXTRA_PERMISSIONS]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("institutions", "0001_initial"),
        ("credentials", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
