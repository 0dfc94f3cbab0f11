"""Staff alerts reach the team's chat through the outbox: once per event, through an outage, grouped.

The chat is a real HTTP server on 127.0.0.1 standing in for a Slack
webhook, reached through apprise's json:// URL exactly as a Slack URL would
be (one POST per message). Time moves with time_machine; the outbox
delivers as the workers would (outbox_deliver_due).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from credentials.models import CD2Credential, Notice, StaffAlert, StaffSettings
from credentials.services import alerts, health, outbox
from credentials.services.submission import Door, credential_submit
from credentials.services.verification import credential_verify, credentials_verify_active
from institutions.models import Contact, Institution
from tests.conftest import PLANTED_SECRET

GROUP_SECONDS = 300


class ChatReceiver:
    """A webhook receiver on loopback: records each POSTed JSON body; can be stopped and started on its port."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> ChatReceiver:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"


@pytest.fixture
def chat(settings):
    receiver = ChatReceiver().start()
    settings.STAFF_ALERT_URLS = [receiver.url]
    settings.STAFF_ALERT_GROUP_SECONDS = GROUP_SECONDS
    yield receiver
    receiver.stop()


def later(seconds: float):
    """Move the clock on (it keeps ticking from there)."""
    return time_machine.travel(timezone.now() + dt.timedelta(seconds=seconds))


def alert_notices(kind=Notice.Kind.STAFF_ALERT):
    return Notice.objects.filter(kind=kind)


def test_a_failed_check_reaches_the_chat_once(chat, cd2_gateway, institution, make_credential):
    key = make_credential(institution, secret=PLANTED_SECRET)  # unknown to the gateway: 401
    credential_verify(credential_id=key.pk)
    assert alert_notices().count() == 1

    outbox.outbox_deliver_due()
    assert chat.received == []  # it waits for others to join its group

    with later(GROUP_SECONDS + 1):
        outbox.outbox_deliver_due()
        outbox.outbox_deliver_due()
        # The same event decided again (a retried task) writes nothing new.
        assert alerts.key_check_failed_record(credential=key, summary="again", now=timezone.now()) == 0
        outbox.outbox_deliver_due()

    assert len(chat.received) == 1
    message = chat.received[0]
    assert message["title"] == "[CD2 registry] 1 key failed its check"
    assert f"{institution.name}: key {key.hint}: rejected (401" in message["message"]
    assert f"/admin/institutions/institution/{institution.pk}/change/" in message["message"]
    assert PLANTED_SECRET not in json.dumps(message)
    assert key.client_id not in json.dumps(message)
    notice = alert_notices().get()
    assert notice.state == Notice.State.SENT
    assert notice.recipients.startswith("JSON channel ")
    assert "127.0.0.1" not in notice.recipients and "127.0.0.1" not in json.dumps(notice.payload)


def test_an_alert_survives_the_chat_being_down_for_an_hour(chat, cd2_gateway, institution, make_credential):
    chat.stop()  # the receiver is down: connection refused
    key = make_credential(institution)
    credential_verify(credential_id=key.pk)

    with later(GROUP_SECONDS + 1):
        outbox.outbox_deliver_due()
        notice = alert_notices().get()
        assert notice.state == Notice.State.PENDING and notice.attempts == 1
        assert notice.last_error.startswith("ChatRefused")

    with later(GROUP_SECONDS + 3600):
        chat.start()  # back, on the same port
        outbox.outbox_deliver_due()
        outbox.outbox_deliver_due()

    assert len(chat.received) == 1
    assert alert_notices().get().state == Notice.State.SENT


def test_a_burst_of_50_failed_checks_arrives_as_one_message(
    chat, cd2_gateway, make_institution, make_credential, make_staff
):
    wants_mail = make_staff("Viewer")
    StaffSettings.objects.create(user=wants_mail, alert_events=[StaffAlert.KEY_CHECK_FAILED])
    no_mail = make_staff("Viewer")
    StaffSettings.objects.create(user=no_mail, alert_events=[StaffAlert.JOB_OVERDUE])
    for _ in range(50):
        institution = make_institution()
        Contact.objects.create(institution=institution, name="Ada", email=f"ada@{institution.slug}.example.edu")
        make_credential(institution)

    run = credentials_verify_active(run_now=True)  # one run: 50 keys refused by the gateway
    assert run.invalid == 50
    assert alert_notices().count() == 50
    assert alert_notices(Notice.Kind.STAFF_ALERT_MAIL).count() == 50

    mail.outbox.clear()
    with later(GROUP_SECONDS + 1):
        outbox.outbox_deliver_due()

    assert len(chat.received) == 1
    message = chat.received[0]
    assert message["title"] == "[CD2 registry] 50 keys failed their check"
    assert message["message"].count(": rejected (401") == alerts.ITEMS_PER_GROUP
    assert "and 30 more" in message["message"]
    assert set(alert_notices().values_list("state", flat=True)) == {Notice.State.SENT}
    alert_mail = [m for m in mail.outbox if m.subject.startswith("[CD2 registry]")]
    assert [m.to for m in alert_mail] == [[wants_mail.email]]
    assert alert_mail[0].subject == "[CD2 registry] 50 keys failed their check"


def test_a_refused_key_and_the_notice_that_gave_up_on_it_go_in_one_message(chat, make_institution, make_credential):
    # Neither institution has an account owner, and no digest recipients: the conflict note cannot go out.
    # CD2 cannot be asked here and the Secret is the one on file: the proof the refusal needs (issue 24 item 4).
    on_file_for = make_institution(name="Lakeside College")
    key = make_credential(on_file_for)
    other = make_institution(name="Harbour City Schools")
    outcome = credential_submit(
        door=Door.staff(institution=other, user=None),
        client_id=key.client_id,
        secret=key.secret,
        expires_on=key.expires_on,
    )
    assert outcome.result.value == "taken"
    outbox.outbox_deliver_due()  # the conflict note gives up at once: nobody to tell
    assert Notice.objects.get(kind=Notice.Kind.KEY_CONFLICT).state == Notice.State.FAILED

    with later(GROUP_SECONDS + 1):
        outbox.outbox_deliver_due()

    assert len(chat.received) == 1
    message = chat.received[0]
    assert message["title"] == (
        "[CD2 registry] 2 alerts: 1 notice gave up; 1 key refused: on file for another institution"
    )
    assert f"Harbour City Schools: key {key.hint} is on file for Lakeside College" in message["message"]
    assert "Nobody to tell" in message["message"]


def test_a_staff_alert_that_gives_up_raises_no_alert_about_itself(chat, cd2_gateway, institution, make_credential):
    chat.stop()
    key = make_credential(institution)
    credential_verify(credential_id=key.pk)
    with later(4 * 24 * 3600):  # past NOTICE_GIVE_UP_AFTER (72 hours)
        outbox.outbox_deliver_due()
        outbox.outbox_deliver_due()
    assert list(alert_notices().values_list("state", flat=True)) == [Notice.State.FAILED]


def test_an_overdue_job_is_alerted_once_per_overdue_spell(chat, settings, db):
    settings.SCHEDULED_JOBS_OVERDUE_AFTER = {health.JOB_REMINDERS: dt.timedelta(hours=26)}
    now = timezone.now()
    ran = now - dt.timedelta(hours=30)
    health.job_record(name=health.JOB_REMINDERS, started_at=ran, finished_at=ran, counts={})
    assert alerts.staff_alerts_jobs_overdue(now=now) == 1
    assert alerts.staff_alerts_jobs_overdue(now=now + dt.timedelta(minutes=5)) == 0  # the same spell
    # It ran again, then went overdue again: a new spell, a new alert.
    again = now + dt.timedelta(hours=1)
    health.job_record(name=health.JOB_REMINDERS, started_at=again, finished_at=again, counts={})
    assert alerts.staff_alerts_jobs_overdue(now=again + dt.timedelta(hours=1)) == 0
    assert alerts.staff_alerts_jobs_overdue(now=again + dt.timedelta(hours=27)) == 1
    assert [n.payload["subject"] for n in alert_notices()] == [health.JOB_REMINDERS] * 2


def test_a_key_that_lapsed_with_no_new_key_is_alerted_once(chat, make_institution, make_credential):
    lapsed = make_credential(make_institution(name="St Brendan's Academy"), days=-1)
    make_credential(make_institution(), days=0)  # its last day: not lapsed yet
    make_credential(make_institution(status=Institution.Status.PAUSED), days=-1)  # not served
    make_credential(make_institution(), days=-30)  # lapsed long ago: reported then
    renewed = make_institution()
    make_credential(renewed, days=-2)
    make_credential(renewed, status=CD2Credential.Status.PENDING_VERIFICATION)  # a new key is on its way

    assert alerts.staff_alerts_keys_lapsed() == 1
    assert alerts.staff_alerts_keys_lapsed() == 0
    notice = alert_notices().get()
    assert notice.credential_id == lapsed.pk
    assert notice.payload["subject"] == "St Brendan's Academy"


def test_without_chat_urls_or_mail_choices_nothing_is_written(settings, cd2_gateway, institution, make_credential):
    settings.STAFF_ALERT_URLS = []
    key = make_credential(institution)
    credential_verify(credential_id=key.pk)
    assert not Notice.objects.filter(kind__in=[Notice.Kind.STAFF_ALERT, Notice.Kind.STAFF_ALERT_MAIL]).exists()


def test_a_channel_taken_out_of_the_settings_gets_nothing(chat, settings, cd2_gateway, institution, make_credential):
    key = make_credential(institution)
    credential_verify(credential_id=key.pk)
    settings.STAFF_ALERT_URLS = []
    with later(GROUP_SECONDS + 1):
        outbox.outbox_deliver_due()
    assert chat.received == []
    assert alert_notices().get().state == Notice.State.CANCELLED
