"""One state per reminder step: its notice's. The step row keeps its claim only.

Forward: a step without a notice gets one in the state its row had
(claimed: pending, so the outbox sends it; sent; failed; skipped:
superseded); a notice that lacks the step's recipients or sent time gets
them; then the step's own delivery columns go. Backward: the columns come
back, filled from the notices.
"""

from django.conf import settings
from django.db import migrations
from django.db.models import Case, OuterRef, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

# A step's state, as its notice says it (and back).
NOTICE_STATE = {"claimed": "pending", "sent": "sent", "failed": "failed", "skipped": "superseded"}
STEP_STATE = {"pending": "claimed", "sending": "claimed", "sent": "sent", "failed": "failed"}  # else: skipped
BATCH = 2000


def notices_for_steps(apps, schema_editor):
    ReminderLog = apps.get_model("credentials", "ReminderLog")
    Notice = apps.get_model("credentials", "Notice")
    now = timezone.now()
    batch = []
    for log in ReminderLog.objects.filter(notice__isnull=True).select_related("credential").iterator(chunk_size=BATCH):
        state = NOTICE_STATE.get(log.state, "pending")
        closed = {"sent": log.sent_at, "failed": log.failed_at, "superseded": log.claimed_at}.get(state)
        batch.append(
            Notice(
                kind="reminder",
                state=state,
                dedupe_key=f"reminder:{log.pk}",
                reminder_id=log.pk,
                credential_id=log.credential_id,
                institution_id=log.credential.institution_id,
                day=timezone.localdate(log.claimed_at),
                as_of=log.claimed_at,
                created_at=log.claimed_at,
                next_attempt_at=log.claimed_at,
                # A claimed step is sent by the outbox, with a full retry window from now.
                retry_until=max(log.claimed_at, now) + settings.NOTICE_GIVE_UP_AFTER,
                recipients=log.recipients,
                sent_at=log.sent_at if state == "sent" else None,
                closed_at=(closed or log.claimed_at) if state != "pending" else None,
            )
        )
        if len(batch) >= BATCH:
            Notice.objects.bulk_create(batch)
            batch = []
    Notice.objects.bulk_create(batch)
    step = ReminderLog.objects.filter(pk=OuterRef("reminder_id"))
    reminders = Notice.objects.filter(reminder__isnull=False)
    reminders.filter(recipients="").update(recipients=Subquery(step.values("recipients")[:1]))
    reminders.filter(sent_at__isnull=True).update(sent_at=Subquery(step.values("sent_at")[:1]))


def steps_from_notices(apps, schema_editor):
    ReminderLog = apps.get_model("credentials", "ReminderLog")
    Notice = apps.get_model("credentials", "Notice")
    notice = Notice.objects.filter(reminder_id=OuterRef("pk"))
    old_state = Case(
        *(When(state=state, then=Value(step_state)) for state, step_state in STEP_STATE.items()),
        default=Value("skipped"),
    )
    ReminderLog.objects.update(
        state=Coalesce(Subquery(notice.annotate(old=old_state).values("old")[:1]), Value("claimed")),
        sent_at=Subquery(notice.filter(state="sent").values("sent_at")[:1]),
        failed_at=Subquery(notice.filter(state="failed").values("closed_at")[:1]),
        recipients=Coalesce(Subquery(notice.values("recipients")[:1]), Value("")),
    )


class Migration(migrations.Migration):
    dependencies = [
        ("credentials", "0019_staff_settings_time_zone"),
    ]

    operations = [
        migrations.RunPython(notices_for_steps, steps_from_notices),
        migrations.RemoveField(model_name="reminderlog", name="state"),
        migrations.RemoveField(model_name="reminderlog", name="sent_at"),
        migrations.RemoveField(model_name="reminderlog", name="failed_at"),
        migrations.RemoveField(model_name="reminderlog", name="recipients"),
    ]
