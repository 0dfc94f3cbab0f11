"""Fill the institutions' stored key summary (institutions 0005) from their keys.

A frozen copy of selectors.key_summary_expected as it was when the columns
came: a migration must not follow later changes of the live code. One
UPDATE for every institution; `manage.py check_key_summary` compares with
the live rule afterwards.
"""

from django.db import migrations, models
from django.db.models import Case, Exists, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.db.models.lookups import Exact

FAILED_VERDICTS = ("rejected", "forbidden")


def fill(apps, schema_editor):
    Institution = apps.get_model("institutions", "Institution")
    CD2Credential = apps.get_model("credentials", "CD2Credential")
    keys = CD2Credential.objects.filter(institution=OuterRef("pk"))
    active = keys.filter(status="active")
    newest_status = Subquery(keys.exclude(status="superseded").order_by("-submitted_at", "-pk").values("status")[:1])
    Institution.objects.update(
        key_condition=Case(
            When(Exact(newest_status, "pending_verification"), then=Value("pending")),
            When(Exists(active.filter(last_verdict__in=FAILED_VERDICTS)), then=Value("failing")),
            When(Exists(active), then=Value("active")),
            When(Exact(newest_status, "invalid"), then=Value("failing")),
            default=Value("missing"),
            output_field=models.CharField(),
        ),
        key_pk=Subquery(active.values("pk")[:1]),
        key_expires_on=Subquery(active.values("expires_on")[:1]),
        key_checked_at=Subquery(active.values("last_verified_at")[:1]),
        key_region=Coalesce(Subquery(active.values("region")[:1]), Value("")),
    )


class Migration(migrations.Migration):
    dependencies = [
        ("credentials", "0011_notice_kinds_and_payload"),
        ("institutions", "0005_key_summary"),
    ]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
