"""Fill Institution.key_reminded_unanswered (institutions 0006) from the reminders and keys.

A frozen copy of the rule in selectors.key_summary_expected as it was when the
column came; `manage.py check_key_summary` compares with the live rule afterwards.
"""

from django.db import migrations
from django.db.models import Exists, OuterRef


def fill(apps, schema_editor):
    Institution = apps.get_model("institutions", "Institution")
    CD2Credential = apps.get_model("credentials", "CD2Credential")
    ReminderLog = apps.get_model("credentials", "ReminderLog")
    answer = CD2Credential.objects.filter(
        institution=OuterRef("credential__institution"), submitted_at__gt=OuterRef("sent_at")
    ).exclude(pk=OuterRef("credential"))
    reminded = ReminderLog.objects.filter(
        credential__institution=OuterRef("pk"), credential__status="active", state="sent"
    ).filter(~Exists(answer))
    Institution.objects.update(key_reminded_unanswered=Exists(reminded))


class Migration(migrations.Migration):
    dependencies = [
        ("credentials", "0017_reminderlog_delivery_on_notice"),
        ("institutions", "0006_key_reminded_unanswered"),
    ]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
