from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection, connections, transaction

from credentials.models import CD2Credential
from credentials.services.keys import credential_activate, credential_create
from tests.conftest import PASSED_CHECK

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_second_active_key_for_an_institution_is_refused_by_the_database(institution, make_credential):
    first = make_credential(institution)
    with pytest.raises(IntegrityError), transaction.atomic():
        CD2Credential.objects.filter(pk=make_credential(institution, status="pending_verification").pk).update(
            status=CD2Credential.Status.ACTIVE
        )
    assert list(CD2Credential.objects.active().values_list("pk", flat=True)) == [first.pk]


def test_a_new_active_key_supersedes_the_old_one_and_keeps_it(institution, make_credential):
    old = make_credential(institution)
    new = make_credential(institution)
    old.refresh_from_db()
    assert old.status == CD2Credential.Status.SUPERSEDED
    assert "Superseded by key" in old.status_reason
    assert new.status == CD2Credential.Status.ACTIVE
    assert CD2Credential.objects.filter(institution=institution).count() == 2


def _in_threads(target, count: int) -> list[BaseException | None]:
    barrier = threading.Barrier(count)
    outcomes: list[BaseException | None] = [None] * count

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            target(i)
        except BaseException as exc:
            outcomes[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent transactions need PostgreSQL")
def test_two_concurrent_raw_inserts_of_an_active_key_leave_exactly_one(institution, make_key):
    keys = [make_key(), make_key()]

    def insert_active(i: int) -> None:
        with transaction.atomic():
            CD2Credential.objects.create(
                institution=institution,
                client_id=keys[i].client_id,
                secret=keys[i].secret,
                region="us-east-1",
                hint=keys[i].hint,
                expires_on=keys[i].expires_on,
                status=CD2Credential.Status.ACTIVE,
                source=CD2Credential.Source.IMPORT,
            )

    outcomes = _in_threads(insert_active, 2)
    assert sorted(type(o).__name__ for o in outcomes) == ["IntegrityError", "NoneType"]
    assert CD2Credential.objects.active().filter(institution=institution).count() == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent transactions need PostgreSQL")
def test_concurrent_activations_serialise_and_leave_one_active(institution, make_key):
    pending = [
        credential_create(institution=institution, key=make_key(), source=CD2Credential.Source.LINK) for _ in range(4)
    ]
    outcomes = _in_threads(lambda i: credential_activate(credential=pending[i], check=PASSED_CHECK), 4)
    assert outcomes == [None] * 4
    statuses = sorted(CD2Credential.objects.filter(institution=institution).values_list("status", flat=True))
    assert statuses == ["active", "superseded", "superseded", "superseded"]
