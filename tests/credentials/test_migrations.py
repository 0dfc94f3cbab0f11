"""The migration that moved state from text into columns, forward and back, on real rows."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("credentials", "0002_roles"), ("institutions", "0001_initial")]
AFTER = [("credentials", "0004_fill_state_columns_and_move_roles")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
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
    # Leave the database as the rest of the suite expects it: every migration applied.
    _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
