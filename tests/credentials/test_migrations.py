"""The migration that moved state from text into columns, forward and back, on real rows."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("credentials", "0002_roles"), ("institutions", "0001_initial")]
AFTER = [("credentials", "0004_fill_state_columns_and_move_roles")]


def _migrate(targets=None):
    """Migrate to `targets`; None: every app to its newest migration (leave the schema as the next test expects)."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    targets = targets or executor.loader.graph.leaf_nodes()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_state_moves_from_text_into_columns_and_back():
    old = _migrate(BEFORE)
    Institution = old.get_model("institutions", "Institution")
    Credential = old.get_model("credentials", "CD2Credential")
    ReminderLog = old.get_model("credentials", "ReminderLog")
    Group = old.get_model("auth", "Group")
    now = timezone.now()
    inst = Institution.objects.create(name="Old", slug="old", canvas_domain="old.instructure.com")
    keys = {}
    for n, text in enumerate(["ok: 12 tables", "rejected (401 AuthenticationError)", "forbidden (403 X)", ""]):
        keys[text] = Credential.objects.create(
            institution=inst,
            client_id="x",
            secret="y",
            region="us-east-1",
            hint=f"h{n}",
            expires_on=dt.date(2030, 1, 1),
            status="superseded",
            source="admin",
            last_verification=text,
        )
    key = keys[""]
    logs = {
        "sent": ReminderLog.objects.create(credential=key, threshold=30, sent_at=now),
        "failed": ReminderLog.objects.create(credential=key, threshold=14, failed_at=now, last_error="SMTP down"),
        "skipped": ReminderLog.objects.create(credential=key, threshold=7, last_error="Skipped: not sent on time"),
        "claimed": ReminderLog.objects.create(credential=key, threshold=3),
    }
    assert Group.objects.get(name="Customer success").permissions.filter(codename="add_reminderlog").exists()

    new = _migrate(AFTER)
    Credential = new.get_model("credentials", "CD2Credential")
    ReminderLog = new.get_model("credentials", "ReminderLog")
    Group = new.get_model("auth", "Group")
    verdicts = {c.last_verification: c.last_verdict for c in Credential.objects.all()}
    assert verdicts == {
        "ok: 12 tables": "ok",
        "rejected (401 AuthenticationError)": "rejected",
        "forbidden (403 X)": "forbidden",
        "": "",
    }
    assert {name: ReminderLog.objects.get(pk=log.pk).state for name, log in logs.items()} == {
        "sent": "sent",
        "failed": "failed",
        "skipped": "skipped",
        "claimed": "claimed",
    }
    success = set(Group.objects.get(name="Customer success").permissions.values_list("codename", flat=True))
    assert {"send_reminder", "check_key", "revoke_key", "send_submission_link"} <= success
    assert "add_reminderlog" not in success and "change_cd2credential" not in success

    # A step skipped under the new code carries no prefix; going back adds it,
    # because the old code knows a skipped step only by it.
    ReminderLog.objects.filter(pk=logs["claimed"].pk).update(state="skipped", last_error="key replaced")
    old = _migrate(BEFORE)
    ReminderLog = old.get_model("credentials", "ReminderLog")
    Group = old.get_model("auth", "Group")
    assert ReminderLog.objects.get(pk=logs["claimed"].pk).last_error == "Skipped: key replaced"
    assert ReminderLog.objects.get(pk=logs["skipped"].pk).last_error == "Skipped: not sent on time"
    assert Group.objects.get(name="Customer success").permissions.filter(codename="change_cd2credential").exists()
    _migrate()


@pytest.mark.django_db(transaction=True)
def test_existing_audit_events_get_their_actors_username():
    old = _migrate([("credentials", "0004_fill_state_columns_and_move_roles")])
    User = old.get_model("auth", "User")
    AuditEvent = old.get_model("credentials", "AuditEvent")
    ada = User.objects.create(username="ada", is_staff=True)
    by_ada = AuditEvent.objects.create(kind="reveal", actor=ada)
    by_command = AuditEvent.objects.create(kind="key_rotation", actor_label="manage.py rotate_encryption_keys")

    new = _migrate([("credentials", "0005_audit_actor_username")])
    AuditEvent = new.get_model("credentials", "AuditEvent")
    assert AuditEvent.objects.get(pk=by_ada.pk).actor_username == "ada"
    assert AuditEvent.objects.get(pk=by_command.pk).actor_username == ""
    _migrate()


INDEX_BEFORE = [("credentials", "0006_last_pulled"), ("institutions", "0002_export_permission")]
INDEX_AFTER = [("credentials", "0007_client_id_index")]


@pytest.mark.django_db(transaction=True)
def test_0005_indexes_old_rows_flags_later_duplicates_and_the_check_reports_shared_keys():
    from credentials.checks import check_client_id_shared_between_institutions
    from credentials.fields import client_id_index, encrypt_str

    old = _migrate(INDEX_BEFORE)
    Institution = old.get_model("institutions", "Institution")
    Credential = old.get_model("credentials", "CD2Credential")
    north = Institution.objects.create(name="North", slug="north", canvas_domain="north.instructure.com")
    prairie = Institution.objects.create(name="Prairie", slug="prairie", canvas_domain="prairie.instructure.com")

    def add(institution, client_id, status="superseded"):
        return Credential.objects.create(
            institution=institution,
            client_id=client_id,
            secret="s",
            region="us-east-1",
            hint=f"h-{client_id[-4:]}",
            expires_on=dt.date(2030, 1, 1),
            status=status,
            source="admin",
        )

    shared_first = add(north, "us-east-1#shared-0001", status="active")
    shared_again = add(prairie, "us-east-1#shared-0001", status="pending_verification")
    own = add(north, "us-east-1#own-0002")
    # A row written under a key that is no longer configured: left unindexed, not a crash.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE credentials_cd2credential SET client_id = %s WHERE id = %s",
            [encrypt_str("x").replace("gAAAA", "gAAAB"), own.pk],
        )

    new = _migrate(INDEX_AFTER)
    Credential = new.get_model("credentials", "CD2Credential")
    rows = {
        row.pk: row
        for row in Credential.objects.only("pk", "client_id_index", "client_id_index_duplicate", "pending_reason")
    }
    assert rows[shared_first.pk].client_id_index == client_id_index("us-east-1#shared-0001")
    assert rows[shared_first.pk].client_id_index_duplicate is False
    assert rows[shared_again.pk].client_id_index == rows[shared_first.pk].client_id_index
    assert rows[shared_again.pk].client_id_index_duplicate is True  # kept, flagged, not merged
    assert rows[shared_again.pk].pending_reason == "unavailable"
    assert rows[own.pk].client_id_index is None
    _migrate()

    (warning,) = check_client_id_shared_between_institutions()
    assert warning.id == "credentials.W002"
    assert "north (h-0001)" in warning.msg and "prairie (h-0001)" in warning.msg
    assert rows[shared_first.pk].client_id_index not in warning.msg


@pytest.mark.django_db(transaction=True)
def test_bulk_link_items_become_outbox_notices_and_the_unsent_ones_are_still_sent():
    old = _migrate([("credentials", "0013_auditevent_contact_added")])
    Institution = old.get_model("institutions", "Institution")
    LinkBatch = old.get_model("credentials", "LinkBatch")
    LinkBatchItem = old.get_model("credentials", "LinkBatchItem")
    batch = LinkBatch.objects.create()
    states = ["sent", "skipped", "failed", "queued", "sending"]
    for n, state in enumerate(states):
        inst = Institution.objects.create(name=f"B{n}", slug=f"b{n}", canvas_domain=f"b{n}.instructure.com")
        LinkBatchItem.objects.create(batch=batch, institution=inst, state=state, error="SMTP 451" * (state == "failed"))

    new = _migrate([("credentials", "0015_link_batch_item_notice_required")])
    LinkBatchItem = new.get_model("credentials", "LinkBatchItem")
    after = {
        i.institution.slug: (i.notice.kind, i.notice.state, i.notice.last_error) for i in LinkBatchItem.objects.all()
    }
    _migrate()

    assert after == {
        "b0": ("submission_link", "sent", ""),
        "b1": ("submission_link", "cancelled", ""),
        "b2": ("submission_link", "failed", "SMTP 451"),
        "b3": ("submission_link", "pending", ""),  # queued: the outbox sends it
        "b4": ("submission_link", "pending", ""),
    }


@pytest.mark.django_db(transaction=True)
def test_0017_moves_old_steps_attempts_and_errors_onto_closed_notices_and_leaves_notices_that_exist():
    old = _migrate([("credentials", "0016_auditevent_token_and_webhook_kinds")])
    Institution = old.get_model("institutions", "Institution")
    Credential = old.get_model("credentials", "CD2Credential")
    ReminderLog = old.get_model("credentials", "ReminderLog")
    Notice = old.get_model("credentials", "Notice")
    now = timezone.now()
    inst = Institution.objects.create(name="Old", slug="old", canvas_domain="old.instructure.com")
    key = Credential.objects.create(
        institution=inst, client_id="x", secret="y", region="us-east-1", hint="h", expires_on=dt.date(2030, 1, 1),
        status="active", source="admin",
    )  # fmt: skip
    sent = ReminderLog.objects.create(credential=key, threshold=30, state="sent", sent_at=now, attempts=2)
    failed = ReminderLog.objects.create(
        credential=key, threshold=14, state="failed", failed_at=now, attempts=5, last_error="550 unknown user"
    )
    skipped = ReminderLog.objects.create(credential=key, threshold=7, state="skipped", last_error="Not sent on time")
    claimed = ReminderLog.objects.create(credential=key, threshold=3, state="claimed", attempts=1, last_error="451")
    Notice.objects.create(
        kind="reminder", dedupe_key=f"reminder:{claimed.pk}", reminder=claimed, credential=key, institution=inst,
        day=now.date(), as_of=now, retry_until=now, attempts=1, last_error="451 later",
    )  # fmt: skip

    new = _migrate([("credentials", "0017_reminderlog_delivery_on_notice")])
    Notice = new.get_model("credentials", "Notice")
    moved = {n.reminder_id: n for n in Notice.objects.all()}
    assert (moved[sent.pk].state, moved[sent.pk].attempts, moved[sent.pk].sent_at) == ("sent", 2, now)
    assert (moved[failed.pk].state, moved[failed.pk].attempts, moved[failed.pk].last_error) == (
        "failed",
        5,
        "550 unknown user",
    )
    assert (moved[skipped.pk].state, moved[skipped.pk].last_error) == ("superseded", "Not sent on time")
    assert moved[claimed.pk].last_error == "451 later" and moved[claimed.pk].state == "pending"  # left as it was
    assert all(n.closed_at is not None for pk, n in moved.items() if pk != claimed.pk)
    _migrate()


ONE_STATE_BEFORE = [("credentials", "0019_staff_settings_time_zone")]
ONE_STATE_AFTER = [("credentials", "0020_reminderlog_state_on_notice")]


@pytest.mark.django_db(transaction=True)
def test_0020_leaves_each_step_one_state_its_notices_and_going_back_fills_the_steps_from_them():
    old = _migrate(ONE_STATE_BEFORE)
    Institution = old.get_model("institutions", "Institution")
    Credential = old.get_model("credentials", "CD2Credential")
    ReminderLog = old.get_model("credentials", "ReminderLog")
    Notice = old.get_model("credentials", "Notice")
    now = timezone.now().replace(microsecond=0)
    earlier = now - dt.timedelta(days=3)
    inst = Institution.objects.create(name="Old", slug="old", canvas_domain="old.instructure.com")
    key = Credential.objects.create(
        institution=inst, client_id="x", secret="y", region="us-east-1", hint="h", expires_on=dt.date(2030, 1, 1),
        status="active", source="admin",
    )  # fmt: skip
    to = "ada@old.example.edu"
    # Steps without a notice, one per old state.
    sent = ReminderLog.objects.create(
        credential=key, threshold=60, state="sent", claimed_at=earlier, sent_at=now, recipients=to
    )
    failed = ReminderLog.objects.create(credential=key, threshold=30, state="failed", claimed_at=earlier, failed_at=now)
    skipped = ReminderLog.objects.create(credential=key, threshold=14, state="skipped", claimed_at=earlier)
    claimed = ReminderLog.objects.create(credential=key, threshold=7, state="claimed", claimed_at=earlier)
    # A step whose notice exists but lacks the recipients and the sent time the step holds.
    bare = ReminderLog.objects.create(
        credential=key, threshold=3, state="sent", claimed_at=earlier, sent_at=now, recipients=to
    )
    Notice.objects.create(
        kind="reminder", state="sent", dedupe_key=f"reminder:{bare.pk}", reminder=bare, credential=key,
        institution=inst, day=now.date(), as_of=earlier, retry_until=now, closed_at=now,
    )  # fmt: skip
    # A step whose notice was resent by staff after it gave up: the notice is the newer word.
    resent = ReminderLog.objects.create(credential=key, threshold=1, state="failed", claimed_at=earlier, failed_at=now)
    Notice.objects.create(
        kind="reminder", state="pending", dedupe_key=f"reminder:{resent.pk}", reminder=resent, credential=key,
        institution=inst, day=now.date(), as_of=earlier, retry_until=now, recipients=to,
    )  # fmt: skip

    new = _migrate(ONE_STATE_AFTER)
    ReminderLog = new.get_model("credentials", "ReminderLog")
    Notice = new.get_model("credentials", "Notice")
    assert {f.name for f in ReminderLog._meta.get_fields()} & {"state", "sent_at", "failed_at", "recipients"} == set()
    after = {n.reminder_id: (n.state, n.recipients, n.sent_at, n.closed_at) for n in Notice.objects.all()}
    assert after == {
        sent.pk: ("sent", to, now, now),
        failed.pk: ("failed", "", None, now),
        skipped.pk: ("superseded", "", None, earlier),
        claimed.pk: ("pending", "", None, None),  # the outbox sends it
        bare.pk: ("sent", to, now, now),
        resent.pk: ("pending", to, None, None),
    }
    assert Notice.objects.get(reminder_id=claimed.pk).next_attempt_at <= timezone.now()  # due
    # The new code settles a step on its notice alone.
    Notice.objects.filter(reminder_id=claimed.pk).update(state="sent", sent_at=now, closed_at=now, recipients=to)

    back = _migrate(ONE_STATE_BEFORE)
    ReminderLog = back.get_model("credentials", "ReminderLog")
    steps = {log.pk: (log.state, log.recipients, log.sent_at, log.failed_at) for log in ReminderLog.objects.all()}
    _migrate()

    assert steps == {
        sent.pk: ("sent", to, now, None),
        failed.pk: ("failed", "", None, now),
        skipped.pk: ("skipped", "", None, None),
        claimed.pk: ("sent", to, now, None),
        bare.pk: ("sent", to, now, None),
        resent.pk: ("claimed", to, None, None),
    }
