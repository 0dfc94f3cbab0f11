"""One vocabulary of key states: the stored summary says "ok" where it said "active" (institutions.models.KeyState)."""

from django.db import migrations, models


def active_to_ok(apps, schema_editor):
    apps.get_model("institutions", "Institution").objects.filter(key_condition="active").update(key_condition="ok")


def ok_to_active(apps, schema_editor):
    apps.get_model("institutions", "Institution").objects.filter(key_condition="ok").update(key_condition="active")


class Migration(migrations.Migration):
    dependencies = [
        ("institutions", "0006_key_reminded_unanswered"),
    ]

    operations = [
        migrations.AlterField(
            model_name="institution",
            name="key_condition",
            field=models.CharField(
                choices=[("ok", "Active"), ("pending", "Pending check"), ("failing", "Failing check"), ("missing", "Missing")],
                db_default="missing",
                default="missing",
                editable=False,
                max_length=10,
            ),
        ),
        migrations.RunPython(active_to_ok, ok_to_active),
    ]
