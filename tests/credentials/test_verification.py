from __future__ import annotations

import datetime as dt
import itertools
from io import StringIO
from unittest import mock

import pytest
from celery.exceptions import Retry
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from credentials.cd2 import Verdict
from credentials.models import AuditEvent, CD2Credential, Notice
from credentials.services.keys import credential_create
from credentials.services.links import submission_link_get
from credentials.services.verification import (
    check_spread_seconds,
    credential_verify,
    credentials_verify_active,
    rate_limit_wait,
)
from credentials.tasks import verify_credential, verify_credentials_batch
from credentials.validators import CleanKey
from devtools.fake_gateway import (
    DEMO_ACCEPTED_CLIENT_ID,
    DEMO_ACCEPTED_SECRET,
    FORBIDDEN_DISABLED_CLIENT_ID,
)
from institutions.models import Institution
from tests.conftest import PASSED_CHECK, PLANTED_CLIENT_ID, PLANTED_SECRET, delivered


@pytest.fixture
def owned(institution):
    institution.account_owner = get_user_model().objects.create_user(
        username="olivia", email="olivia@edpotential.example", first_name="Olivia"
    )
    institution.save()
    return institution


def add_key(institution, *, client_id: str = PLANTED_CLIENT_ID, secret: str = PLANTED_SECRET) -> CD2Credential:
    return credential_create(
        institution=institution,
        key=CleanKey(client_id=client_id, secret=secret, expires_on=timezone.localdate() + dt.timedelta(days=200)),
        source=CD2Credential.Source.ADMIN,
        status=CD2Credential.Status.ACTIVE,
        check=PASSED_CHECK,
    )


def test_a_working_key_records_when_and_what_was_checked(cd2_gateway, owned):
    key = add_key(owned)

    result = credential_verify(credential_id=key.pk)

    key.refresh_from_db()
    assert result.verdict is Verdict.OK
    assert key.status == CD2Credential.Status.ACTIVE
    assert key.last_verification.startswith("ok: ")
    assert timezone.now() - key.last_verified_at < dt.timedelta(minutes=1)
    assert mail.outbox == []


def test_a_deleted_key_is_marked_invalid_audited_and_its_people_get_a_fresh_link(
    cd2_gateway, owned, django_capture_on_commit_callbacks
):
    key = add_key(owned)
    cd2_gateway.remove_key(PLANTED_CLIENT_ID)  # an admin deleted it at identity.instructure.com

    with django_capture_on_commit_callbacks(execute=True):
        result = credential_verify(credential_id=key.pk)

    key.refresh_from_db()
    assert result.verdict is Verdict.REJECTED
    assert key.status == CD2Credential.Status.INVALID
    assert key.last_verification.startswith("rejected (401")
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.KEY_INVALID)
    assert event.credential == key and event.detail["status_code"] == 401
    assert mail.outbox == []  # the outbox sends it, not the check
    notice = Notice.objects.get(kind=Notice.Kind.KEY_INVALID, credential=key, state=Notice.State.PENDING)
    assert notice.dedupe_key == f"key-invalid:{key.pk}"
    [message] = delivered()
    assert message.subject == "Action needed: the Canvas Data 2 key for Northfield University no longer works"
    # Whom reminders go to: the contacts, the owner not copied but in Reply-To (the daily summary tells them).
    assert (message.to, message.cc, message.reply_to) == (
        ["ada@northfield.example.edu"],
        [],
        ["olivia@edpotential.example"],
    )
    token = message.body.split("/k/")[1].split("/")[0]
    assert submission_link_get(token=token).institution == owned
    notice.refresh_from_db()
    everything = (
        message.message().as_string()
        + message.alternatives[0][0]
        + repr(event.detail)
        + key.status_reason
        + repr(Notice.objects.filter(pk=notice.pk).values().get())
    )
    assert PLANTED_SECRET not in everything and PLANTED_CLIENT_ID not in everything
    assert (notice.state, notice.recipients) == (Notice.State.SENT, "ada@northfield.example.edu")


def test_a_key_without_cd2_access_is_marked_invalid(cd2_gateway, owned):
    key = add_key(owned, client_id=FORBIDDEN_DISABLED_CLIENT_ID, secret="any-secret")

    result = credential_verify(credential_id=key.pk)

    key.refresh_from_db()
    assert result.verdict is Verdict.FORBIDDEN
    assert key.status == CD2Credential.Status.INVALID
    assert "disabled" in key.status_reason


@pytest.mark.parametrize("mode", ["down", "rate_limited", "garbage"])
def test_gateway_trouble_changes_nothing_but_the_last_result(cd2_gateway, owned, mode):
    key = add_key(owned)
    checked_at = key.last_verified_at
    cd2_gateway.set_mode(mode)

    result = credential_verify(credential_id=key.pk)

    key.refresh_from_db()
    assert result.verdict is Verdict.UNAVAILABLE
    assert key.status == CD2Credential.Status.ACTIVE
    assert key.last_verified_at == checked_at
    assert key.last_verification.startswith("unavailable")
    assert "not a verdict on the key" in key.last_verification
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.KEY_INVALID).exists()


def test_a_rate_limited_check_is_retried_after_retry_after(cd2_gateway, owned):
    key = add_key(owned)
    cd2_gateway.set_mode("rate_limited", retry_after=42)

    with mock.patch.object(verify_credential, "retry", side_effect=Retry()) as retry, pytest.raises(Retry):
        verify_credential.run(key.pk)

    assert retry.call_args.kwargs["countdown"] == 42
    assert cd2_gateway.login_count == 1


def test_rate_limit_wait_is_none_for_other_outcomes(cd2_gateway, owned):
    key = add_key(owned)
    assert rate_limit_wait(credential_verify(credential_id=key.pk)) is None
    cd2_gateway.set_mode("down")
    assert rate_limit_wait(credential_verify(credential_id=key.pk)) is None


def test_a_key_superseded_before_its_check_is_not_checked(cd2_gateway, owned):
    old = add_key(owned)
    add_key(owned, client_id=DEMO_ACCEPTED_CLIENT_ID, secret=DEMO_ACCEPTED_SECRET)

    assert credential_verify(credential_id=old.pk) is None
    assert cd2_gateway.login_count == 0


def test_the_daily_run_spreads_checks_of_served_keys_over_the_window(
    cd2_gateway, owned, make_institution, celery_messages, settings
):
    settings.CD2_CHECK_SPREAD_SECONDS = 3600
    keys = [add_key(owned)] + [
        add_key(make_institution(), client_id=f"us-east-1#spread-{n}", secret="s") for n in range(3)
    ]
    add_key(make_institution(status=Institution.Status.PAUSED), client_id="us-east-1#paused", secret="s")

    run = credentials_verify_active()

    assert run.scheduled == 4
    assert [m["args"] for m in celery_messages] == [[k.pk] for k in keys]
    assert celery_messages[0]["headers"]["eta"] is None  # the first one at once
    etas = [dt.datetime.fromisoformat(m["headers"]["eta"]) for m in celery_messages[1:]]
    first_wait = etas[0] - timezone.now()
    assert dt.timedelta(seconds=890) < first_wait <= dt.timedelta(seconds=900)
    assert [round((b - a).total_seconds()) for a, b in itertools.pairwise(etas)] == [900, 900]
    assert cd2_gateway.login_count == 0  # nothing checked yet: the worker does it


def test_the_command_checks_one_institution_now_and_prints_the_results(cd2_gateway, owned, make_institution):
    add_key(owned)
    add_key(make_institution(), client_id="us-east-1#other", secret="s")
    out = StringIO()

    call_command("verify_credentials", "--institution", "northfield", stdout=out)

    assert "Northfield University: key us-east-1 …beef: ok: " in out.getvalue()
    assert "Checked 1 key(s): 1 ok, 0 invalid" in out.getvalue()
    assert cd2_gateway.login_count == 1
    with pytest.raises(CommandError, match="No institution has the slug"):
        call_command("verify_credentials", "--institution", "nowhere")


# --------------------------------------------------------------------------
# The spread: within the gateway's rate and the broker's visibility timeout
# --------------------------------------------------------------------------


@pytest.fixture
def spread_settings(settings):
    settings.CD2_CHECK_SPREAD_SECONDS = 7200
    settings.CD2_GATEWAY_REQUESTS_PER_SECOND = 5
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 12 * 3600}
    return settings


def test_few_keys_are_spread_over_the_configured_window(spread_settings, caplog):
    assert check_spread_seconds(keys=1000) == 7200  # 2 x 1000 / 5 = 400 s would do
    assert check_spread_seconds(keys=0) == 7200
    assert "visibility timeout" not in caplog.text


def test_many_keys_are_spread_so_the_gateway_sees_at_most_its_allowed_rate(spread_settings, caplog):
    assert check_spread_seconds(keys=90_000) == 36_000  # 2 x 90,000 / 5 req/s
    spread_settings.CD2_GATEWAY_REQUESTS_PER_SECOND = 10
    assert check_spread_seconds(keys=90_000) == 18_000
    assert "visibility timeout" not in caplog.text


def test_the_spread_stays_below_the_visibility_timeout_and_says_what_it_would_need(spread_settings, caplog):
    spread = check_spread_seconds(keys=200_000)  # would need 80,000 s at 5 req/s

    assert spread == 0.9 * 12 * 3600
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1
    assert "200000 active keys need 80000 s" in warning[0].getMessage()
    assert "needs 10.3 requests/s" in warning[0].getMessage()  # 400,000 requests / 38,880 s


def test_the_daily_run_spreads_many_keys_by_the_gateway_rate_with_fractional_gaps(
    cd2_gateway, make_institution, celery_messages, settings
):
    settings.CD2_CHECK_SPREAD_SECONDS = 10
    settings.CD2_GATEWAY_REQUESTS_PER_SECOND = 3  # 3 keys x 2 requests need 2 s ... over 10 s: 3.333 s apart
    for n in range(3):
        add_key(make_institution(), client_id=f"us-east-1#rate-{n}", secret="s")

    credentials_verify_active()

    etas = [dt.datetime.fromisoformat(m["headers"]["eta"]) for m in celery_messages[1:]]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise([timezone.now(), *etas])]
    assert gaps == pytest.approx([10 / 3, 10 / 3], abs=0.05)  # not rounded to 3 s

    celery_messages.clear()
    settings.CD2_GATEWAY_REQUESTS_PER_SECOND = 0.2  # now 3 keys need 30 s: 10 s apart
    credentials_verify_active()
    etas = [dt.datetime.fromisoformat(m["headers"]["eta"]) for m in celery_messages[1:]]
    assert (etas[-1] - timezone.now()).total_seconds() == pytest.approx(20, abs=0.5)


def test_above_a_batch_the_daily_run_queues_batches_that_queue_their_own_checks(
    cd2_gateway, make_institution, celery_messages, settings, monkeypatch
):
    from credentials.services import verification

    monkeypatch.setattr(verification, "CHECK_BATCH_SIZE", 2)
    settings.CD2_CHECK_SPREAD_SECONDS = 500
    keys = [add_key(make_institution(), client_id=f"us-east-1#batch-{n}", secret="s") for n in range(5)]

    run = credentials_verify_active()

    assert run.scheduled == 5
    assert [m["task"] for m in celery_messages] == ["credentials.tasks.verify_credentials_batch"] * 3
    assert [m["args"] for m in celery_messages] == [
        [[keys[0].pk, keys[1].pk], 100.0],
        [[keys[2].pk, keys[3].pk], 100.0],
        [[keys[4].pk], 100.0],
    ]
    waits = [
        (dt.datetime.fromisoformat(m["headers"]["eta"]) - timezone.now()).total_seconds() for m in celery_messages[1:]
    ]
    assert waits == pytest.approx([200, 400], abs=1)  # each batch due when its first check is

    celery_messages.clear()
    assert verify_credentials_batch.apply(args=[[keys[2].pk, keys[3].pk], 100.0]).result == 2
    assert [(m["task"], m["args"]) for m in celery_messages] == [
        ("credentials.tasks.verify_credential", [keys[2].pk]),
        ("credentials.tasks.verify_credential", [keys[3].pk]),
    ]
    assert celery_messages[0]["headers"]["eta"] is None
    second = dt.datetime.fromisoformat(celery_messages[1]["headers"]["eta"]) - timezone.now()
    assert second.total_seconds() == pytest.approx(100, abs=1)
    assert cd2_gateway.login_count == 0
