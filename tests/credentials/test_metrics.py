"""/metrics: the registry's numbers in Prometheus' text format, for the bearer of METRICS_TOKEN only.

Each test builds a known dataset, scrapes /metrics as Prometheus would and
reads it back with prometheus-client's own parser.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from api.models import Scope, ServiceAccount
from api.services import ApiRefused, api_key_read, api_token_issue
from credentials.days import earliest_expiry_still_reminded, institution_key_days, institution_today
from credentials.models import CD2Credential, MetricCount, Notice
from credentials.services import health, metrics, notices, outbox
from credentials.services.keys import credential_set_status
from credentials.services.submission import Door, credential_submit
from institutions.models import Institution
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET, accepted_submission

TOKEN = "metrics-token-for-tests-9f8e7d"


@pytest.fixture
def scrape(client, settings):
    settings.METRICS_TOKEN = TOKEN

    def get() -> dict[tuple[str, tuple], float]:
        response = client.get(reverse("metrics"), headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=")
        samples = {}
        for family in text_string_to_metric_families(response.content.decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    return get


def value(samples, name, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_it_answers_404_when_no_token_is_configured(client, settings, db):
    settings.METRICS_TOKEN = ""
    assert client.get(reverse("metrics")).status_code == 404
    assert client.get(reverse("metrics"), headers={"Authorization": "Bearer "}).status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN, "Bearer"])
def test_it_refuses_a_scrape_without_the_token(client, settings, db, header):
    settings.METRICS_TOKEN = TOKEN
    headers = {"Authorization": header} if header else {}
    response = client.get(reverse("metrics"), headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"cd2_" not in response.content


def _notice(kind, state, *, created, next_attempt=None, attempts=0, n=[0]) -> Notice:  # noqa: B006 (a counter)
    n[0] += 1
    return Notice.objects.create(
        kind=kind,
        state=state,
        dedupe_key=f"test:{n[0]}",
        day=timezone.localdate(created),
        as_of=created,
        created_at=created,
        next_attempt_at=next_attempt or created,
        retry_until=created + dt.timedelta(days=3),
        attempts=attempts,
    )


def test_each_registry_number_is_what_the_dataset_implies(scrape, make_institution, make_credential, today):
    for days in (365, 200):
        make_credential(make_institution(), days=days)  # ok
    make_credential(make_institution(), days=20)  # expiring in 8-30 days
    make_credential(make_institution(), days=7)  # expiring within 7 days
    make_credential(make_institution(), days=0)  # the last day: still usable, the soonest
    make_credential(make_institution(), days=-3)  # expired
    make_credential(make_institution(), status=CD2Credential.Status.PENDING_VERIFICATION)  # pending
    failing = make_credential(make_institution(), days=90)
    credential_set_status(credential=failing, status=CD2Credential.Status.INVALID, reason="401")  # failing
    make_institution()  # missing
    make_institution()  # missing
    make_credential(make_institution(status=Institution.Status.PAUSED), days=2)  # not served: not counted

    now = timezone.now()
    _notice(Notice.Kind.REMINDER, Notice.State.PENDING, created=now - dt.timedelta(hours=3), attempts=2)
    _notice(Notice.Kind.REMINDER, Notice.State.PENDING, created=now - dt.timedelta(minutes=5))
    # A bulk link not due before an hour from now waits for nobody: it does not count as waiting.
    _notice(
        Notice.Kind.SUBMISSION_LINK,
        Notice.State.PENDING,
        created=now - dt.timedelta(days=1),
        next_attempt=now + dt.timedelta(hours=1),
    )
    _notice(Notice.Kind.WEBHOOK, Notice.State.FAILED, created=now - dt.timedelta(days=4), attempts=9)
    _notice(Notice.Kind.RECEIPT, Notice.State.SENT, created=now - dt.timedelta(days=1), attempts=1)
    finished = now - dt.timedelta(hours=30)
    health.job_record(
        name=health.JOB_REMINDERS,
        started_at=finished - dt.timedelta(minutes=1),
        finished_at=finished,
        counts={"queued": 4, "skipped": 1, "note": "words are not counts"},
    )
    health.job_record(name=health.JOB_SWEEP_NOTICES, started_at=now, finished_at=now, counts={"queued": 0})

    samples = scrape()

    expected = {"ok": 2, "expiring_30d": 1, "expiring_7d": 2, "expired": 1, "pending": 1, "failing": 1, "missing": 2}
    for state, count in expected.items():
        assert value(samples, "cd2_institutions", key_state=state) == count, state
    soonest = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC).timestamp()
    assert value(samples, "cd2_key_soonest_expiry_timestamp_seconds") == soonest

    assert value(samples, "cd2_outbox_notices", kind="reminder", state="pending") == 3 - 1
    assert value(samples, "cd2_outbox_notices", kind="submission_link", state="pending") == 1
    assert value(samples, "cd2_outbox_notices", kind="webhook", state="failed") == 1
    assert value(samples, "cd2_outbox_notices", kind="receipt", state="pending") == 0
    oldest = value(samples, "cd2_outbox_oldest_waiting_age_seconds")
    assert 3 * 3600 <= oldest < 3 * 3600 + 60

    assert value(samples, "cd2_job_last_success_timestamp_seconds", job=health.JOB_REMINDERS) == finished.timestamp()
    assert value(samples, "cd2_job_overdue", job=health.JOB_REMINDERS) == 1  # 30 hours > its limit (2 hours, hourly)
    assert value(samples, "cd2_job_overdue", job=health.JOB_SWEEP_NOTICES) == 0
    overdue_after = settings.SCHEDULED_JOBS_OVERDUE_AFTER[health.JOB_REMINDERS]
    assert value(samples, "cd2_job_overdue_after_seconds", job=health.JOB_REMINDERS) == overdue_after.total_seconds()
    assert value(samples, "cd2_job_last_run_count", job=health.JOB_REMINDERS, count="queued") == 4
    assert ("cd2_job_last_run_count", (("count", "note"), ("job", health.JOB_REMINDERS))) not in samples


def test_the_counters_count_what_the_doors_did(scrape, institution, cd2_gateway, make_credential, make_staff):
    # A key handed over and checked live (the fake gateway: a login and a table list, both 200).
    form = accepted_submission()
    door = Door.staff(institution=institution, user=make_staff("Customer success"))
    outcome = credential_submit(
        door=door, client_id=form["client_id"], secret=form["secret"], expires_on=form["expires_on"]
    )
    assert outcome.result.value == "accepted"
    # The same key again: "already have it", no gateway call.
    credential_submit(door=door, client_id=form["client_id"], secret=form["secret"], expires_on=form["expires_on"])

    # The pipeline reads the key once, and once for an institution it cannot see.
    account = ServiceAccount.objects.create(name="airflow")
    account.institutions.set([institution])
    token = api_token_issue(account=account, scopes=[Scope.KEYS_READ]).token
    api_key_read(token=token, institution_slug=institution.slug, ip_address=None)
    with pytest.raises(ApiRefused):
        api_key_read(token=token, institution_slug="nowhere", ip_address=None)

    # The outbox meets a webhook notice whose account is gone: closed unsent.
    notices.notice_write(
        kind=Notice.Kind.WEBHOOK,
        dedupe_key="webhook:gone",
        now=timezone.now(),
        institution_id=institution.pk,
        payload={"account_id": 999, "body": {"id": "x"}},
    )
    delivery = outbox.outbox_deliver_due()

    samples = scrape()
    assert value(samples, "cd2_submissions_total", outcome="accepted") == 1
    assert value(samples, "cd2_submissions_total", outcome="already_have") == 1
    assert value(samples, "cd2_submissions_total", outcome="rejected") == 0
    assert value(samples, "cd2_key_checks_total", verdict="ok") == 1
    assert value(samples, "cd2_key_checks_total", verdict="rejected") == 0
    assert value(samples, "cd2_gateway_request_duration_seconds_count", status_class="2xx") == 2
    assert value(samples, "cd2_gateway_request_duration_seconds_bucket", status_class="2xx", le="+Inf") == 2
    assert 0 < value(samples, "cd2_gateway_request_duration_seconds_sum", status_class="2xx") < 10
    assert value(samples, "cd2_gateway_request_duration_seconds_count", status_class="5xx") == 0
    assert value(samples, "cd2_api_key_reads_total", outcome="served") == 1
    assert value(samples, "cd2_api_key_reads_total", outcome="institution_not_found") == 1
    assert delivery.count("webhook", "closed") == 1
    assert value(samples, "cd2_outbox_deliveries_total", kind="webhook", outcome="closed") == 1
    assert value(samples, "cd2_webhook_deliveries_total", outcome="closed") == 1
    assert value(samples, "cd2_webhook_deliveries_total", outcome="sent") == 0


def test_a_rejected_key_and_a_gateway_down_are_counted_by_class(scrape, institution, cd2_gateway, make_staff):
    door = Door.staff(institution=institution, user=make_staff("Customer success"))
    expires = accepted_submission()["expires_on"]
    credential_submit(door=door, client_id=PLANTED_CLIENT_ID, secret="not-the-secret", expires_on=expires)
    samples = scrape()
    assert value(samples, "cd2_submissions_total", outcome="rejected") == 1
    assert value(samples, "cd2_key_checks_total", verdict="rejected") == 1
    assert value(samples, "cd2_gateway_request_duration_seconds_count", status_class="4xx") == 1
    assert PLANTED_SECRET not in str(samples)


def test_a_webhook_delivery_counts_as_one_by_outcome(scrape, db):
    metrics.metric_count(metrics.OUTBOX_DELIVERIES, labels={"kind": "webhook", "outcome": "retry"}, n=3)
    metrics.metric_count(metrics.OUTBOX_DELIVERIES, labels={"kind": "webhook", "outcome": "sent"})
    samples = scrape()
    assert value(samples, "cd2_webhook_deliveries_total", outcome="retry") == 3
    assert value(samples, "cd2_webhook_deliveries_total", outcome="sent") == 1
    assert value(samples, "cd2_outbox_deliveries_total", kind="webhook", outcome="retry") == 3


def test_a_label_outside_the_vocabulary_is_refused_not_stored(db):
    with pytest.raises(ValueError, match="labels"):
        metrics.metric_count(metrics.SUBMISSIONS, labels={"outcome": "accepted", "institution": "northfield"})
    with pytest.raises(ValueError, match="plain word"):
        metrics.metric_count(metrics.SUBMISSIONS, labels={"outcome": 'x",evil="1'})
    assert MetricCount.objects.count() == 0


def test_a_scrape_takes_the_same_few_queries_for_any_number_of_institutions(
    client, settings, make_institution, make_credential
):
    settings.METRICS_TOKEN = TOKEN

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            client.get(reverse("metrics"), headers={"Authorization": f"Bearer {TOKEN}"})
        return len(captured)

    make_credential(make_institution(), days=10)
    few = queries()
    for days in range(20):
        make_credential(make_institution(), days=days * 20)
    notices.notice_write(kind=Notice.Kind.RECEIPT, dedupe_key="x", now=timezone.now())
    assert queries() == few
    assert few <= 6  # institutions, outbox by kind, oldest waiting, jobs, counters (+ the session's, if any)


def test_no_label_value_is_a_secret_an_address_or_a_slug(scrape, institution, make_credential):
    make_credential(institution, secret=PLANTED_SECRET)
    samples = scrape()
    text = str(samples)
    for forbidden in (PLANTED_SECRET, institution.slug, "@", "us-east-1#"):
        assert forbidden not in text


def test_institutions_whose_reminders_ended_are_counted_by_the_reminder_rule(scrape, make_institution, make_credential):
    now = timezone.now()
    # The horizon on each institution's own day: the earliest expiry still reminded today, and the day before.
    probe = make_institution()
    horizon = earliest_expiry_still_reminded(institution_today(probe, now))
    at_horizon = (horizon - timezone.localdate(now)).days
    make_credential(probe, days=at_horizon)  # reminded for the last time today: not ended
    make_credential(make_institution(), days=at_horizon - 1)  # ended yesterday
    make_credential(make_institution(), days=-400)  # ended long ago
    make_credential(make_institution(), days=-3)  # lapsed, still reminded
    make_credential(make_institution(), days=30)
    make_credential(make_institution(status=Institution.Status.PAUSED), days=-400)  # not served

    expected = sum(
        institution_key_days(i, expires_on=i.key_expires_on, now=now).reminders_ended
        for i in Institution.objects.filter(status__in=Institution.SERVED_STATUSES)
    )
    samples = scrape()
    assert value(samples, "cd2_institutions_reminders_ended") == expected == 2
    assert value(samples, "cd2_institutions", key_state="expired") == 4  # ended ones are expired too
