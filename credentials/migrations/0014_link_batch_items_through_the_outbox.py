"""Bulk links go through the outbox: each LinkBatchItem points at its Notice; its own state columns go.

Items written before this migration get a notice that says what their state
said: sent, skipped (cancelled: nobody to mail) and failed stay closed; an
item still queued or being sent becomes a pending notice, so the outbox
mails it instead of it being lost with the old task.
"""

import datetime as dt

import django.db.models.deletion
from django.db import migrations, models

# Old item state -> the notice's state.
STATES = {"sent": "sent", "skipped": "cancelled", "failed": "failed", "queued": "pending", "sending": "pending"}


def items_to_notices(apps, schema_editor):
    LinkBatchItem = apps.get_model("credentials", "LinkBatchItem")
    Notice = apps.get_model("credentials", "Notice")
    for item in LinkBatchItem.objects.select_related("batch").iterator():
        made = item.batch.created_at
        state = STATES.get(item.state, "pending")
        closed = None if state == "pending" else (item.finished_at or made)
        notice = Notice.objects.create(
            kind="submission_link",
            state=state,
            dedupe_key=f"link-batch:{item.batch_id}:{item.institution_id}",
            institution_id=item.institution_id,
            day=made.date(),
            as_of=made,
            created_at=made,
            next_attempt_at=made,
            retry_until=made + dt.timedelta(hours=72),
            sent_at=item.finished_at if state == "sent" else None,
            closed_at=closed,
            last_error=item.error[:500],
            payload={"reason": "bulk", "days": None, "created_by": item.batch.created_by_id},
        )
        LinkBatchItem.objects.filter(pk=item.pk).update(notice=notice)


class Migration(migrations.Migration):

    dependencies = [
        ('credentials', '0013_auditevent_contact_added'),
    ]

    operations = [
        migrations.AddField(
            model_name='linkbatchitem',
            name='notice',
            field=models.OneToOneField(null=True, on_delete=django.db.models.deletion.CASCADE, related_name='link_batch_item', to='credentials.notice'),
        ),
        migrations.RunPython(items_to_notices, migrations.RunPython.noop),
    ]
