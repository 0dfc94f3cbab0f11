from __future__ import annotations

import pytest

from api.models import Scope, SyncReport
from credentials import tasks
from credentials.formatting import format_moment
from credentials.models import AuditEvent, CD2Credential
from credentials.services import jobs
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET


def syncs_url(slug: str) -> str:
    return f"/api/v1/institutions/{slug}/syncs"


@pytest.fixture
def sync_token(make_token, institution):
    plaintext, _ = make_token([Scope.SYNCS_WRITE], institutions=[institution])
    return plaintext


def report(api, token, institution, key, outcome, detail=""):
    return api(token).post(syncs_url(institution.slug), {"key_id": key.pk, "outcome": outcome, "detail": detail})


def test_ok_records_the_last_data_pulled(api, sync_token, institution, make_credential, admin_client):
    key = make_credential(institution)
    response = report(api, sync_token, institution, key, "ok")
    assert response.status_code == 202
    assert response.json()["check_queued"] is False and response.json()["active_key_id"] == key.pk
    key.refresh_from_db()
    assert key.last_pulled_at is not None
    assert SyncReport.objects.get().outcome == "ok"
    page = admin_client.get("/admin/institutions/institution/").content.decode()
    # Written as the admin writes every moment (not a strftime of our own: "07 Dec" is not "7 Dec").
    assert "Last data pulled" in page and format_moment(key.last_pulled_at) in page


@pytest.mark.parametrize("accepted", [False, True])
def test_auth_failed_queues_the_usual_check_which_alone_decides(
    accepted,
    api,
    sync_token,
    institution,
    make_credential,
    cd2_gateway,
    celery_messages,
    django_capture_on_commit_callbacks,
):
    if accepted:
        key = make_credential(institution, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    else:
        key = make_credential(institution)  # a key the gateway does not know: 401
    with django_capture_on_commit_callbacks(execute=True):
        response = report(api, sync_token, institution, key, "auth_failed", detail="401 from dap")
    assert response.status_code == 202 and response.json()["check_queued"] is True
    assert [(m["task"], m["args"]) for m in celery_messages] == [(jobs.VERIFY_CREDENTIAL, [key.pk])]
    key.refresh_from_db()
    assert key.status == CD2Credential.Status.ACTIVE  # the report alone changes nothing

    tasks.verify_credential.run(key.pk)  # what the worker runs for that message

    key.refresh_from_db()
    if accepted:
        assert key.status == CD2Credential.Status.ACTIVE and key.last_verdict == "ok"
        assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.KEY_INVALID).exists()
    else:
        assert key.status == CD2Credential.Status.INVALID and key.last_verdict == "rejected"
        assert AuditEvent.objects.filter(kind=AuditEvent.Kind.KEY_INVALID, credential=key).count() == 1


def test_repeated_auth_failed_queues_one_check(
    api, sync_token, institution, make_credential, celery_messages, django_capture_on_commit_callbacks
):
    key = make_credential(institution)
    with django_capture_on_commit_callbacks(execute=True):
        flags = [report(api, sync_token, institution, key, "auth_failed").json()["check_queued"] for _ in range(3)]
    assert flags == [True, False, False]
    assert len(celery_messages) == 1
    assert SyncReport.objects.count() == 3


def test_a_report_about_an_old_key_changes_nothing_and_names_the_new_one(
    api, sync_token, institution, make_credential, celery_messages, django_capture_on_commit_callbacks
):
    old = make_credential(institution)
    new = make_credential(institution)
    with django_capture_on_commit_callbacks(execute=True):
        response = report(api, sync_token, institution, old, "auth_failed")
    assert response.json() == {**response.json(), "check_queued": False, "active_key_id": new.pk}
    assert celery_messages == []


def test_errors_are_recorded_without_a_check(
    api, sync_token, institution, make_credential, celery_messages, django_capture_on_commit_callbacks
):
    key = make_credential(institution)
    with django_capture_on_commit_callbacks(execute=True):
        assert report(api, sync_token, institution, key, "error", detail="disk full").status_code == 202
    assert celery_messages == [] and SyncReport.objects.get().detail == "disk full"


def test_a_secret_in_the_detail_is_never_stored(api, sync_token, institution, make_credential):
    key = make_credential(institution, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    detail = f"login failed for {PLANTED_CLIENT_ID} with {PLANTED_SECRET}"
    report(api, sync_token, institution, key, "error", detail=detail)
    stored = SyncReport.objects.get().detail
    assert PLANTED_SECRET not in stored and PLANTED_CLIENT_ID not in stored and "login failed" in stored


def test_a_key_of_another_institution_or_a_bad_outcome_is_refused(
    api, sync_token, institution, make_institution, make_credential
):
    other_key = make_credential(make_institution())
    response = report(api, sync_token, institution, other_key, "ok")
    assert (response.status_code, response.json()["code"]) == (404, "key_not_found")
    key = make_credential(institution)
    response = report(api, sync_token, institution, key, "maybe")
    assert response.status_code == 400 and "outcome" in response.json()["errors"]
    assert response["Content-Type"] == "application/problem+json"
    assert SyncReport.objects.count() == 0


def test_a_read_only_token_cannot_report(make_token, api, institution, make_credential):
    plaintext, _ = make_token([Scope.KEYS_READ], institutions=[institution])
    key = make_credential(institution)
    assert report(api, plaintext, institution, key, "ok").status_code == 403
