from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.contrib import admin
from django.core import checks
from django.core.checks import run_checks
from django.core.exceptions import FieldError
from django.core.management import call_command
from django.db import connection
from django.db.models.functions import Lower
from django.test import override_settings
from django.test.utils import isolate_apps

from api.models import ServiceAccount
from credentials.checks import check_fernet_keys, check_stored_values_decrypt
from credentials.fields import DecryptionError
from credentials.models import CD2Credential, ReminderLog
from institutions.models import Institution

from ..conftest import PLANTED_SECRET

pytestmark = pytest.mark.django_db


def raw_rows(columns: str = "client_id, secret") -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM credentials_cd2credential")  # noqa: S608
        return cursor.fetchall()


def test_the_credential_table_holds_only_ciphertext(institution, make_credential):
    credential = make_credential(institution, secret=PLANTED_SECRET)
    client_id = CD2Credential.objects.get(pk=credential.pk).client_id

    rows = raw_rows()
    assert len(rows) == 1
    stored_client_id, stored_secret = rows[0]
    for stored in (stored_client_id, stored_secret):
        assert stored.startswith("gAAAAA")
        assert PLANTED_SECRET not in stored
        assert client_id not in stored
        assert client_id.split("#")[1] not in stored
    # Every text column of the row, not only the two encrypted ones.
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM credentials_cd2credential")
        whole_row = " ".join(str(v) for v in cursor.fetchone())
    assert PLANTED_SECRET not in whole_row
    assert client_id not in whole_row


def test_the_same_secret_encrypts_differently_each_time(make_institution, make_credential):
    make_credential(make_institution(), secret=PLANTED_SECRET)
    make_credential(make_institution(), secret=PLANTED_SECRET)
    first, second = (row[0] for row in raw_rows("secret"))
    assert first != second


def test_values_read_back_as_written(institution, make_credential):
    credential = make_credential(institution, secret=PLANTED_SECRET)
    assert CD2Credential.objects.get(pk=credential.pk).secret == PLANTED_SECRET


def test_a_value_written_under_a_key_no_longer_configured_raises_on_read(institution, make_credential):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(FERNET_KEYS=[old_key]):
        credential = make_credential(institution, secret=PLANTED_SECRET)
    with override_settings(FERNET_KEYS=[new_key]):
        with pytest.raises(DecryptionError) as excinfo:
            CD2Credential.objects.get(pk=credential.pk)
    message = str(excinfo.value)
    assert "FERNET_KEYS" in message
    assert "gAAAAA" not in message and PLANTED_SECRET not in message


def test_an_older_key_still_decrypts_when_listed_after_the_newest(institution, make_credential):
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with override_settings(FERNET_KEYS=[old_key]):
        credential = make_credential(institution, secret=PLANTED_SECRET)
    with override_settings(FERNET_KEYS=[new_key, old_key]):
        assert CD2Credential.objects.get(pk=credential.pk).secret == PLANTED_SECRET


def test_lookups_on_an_encrypted_field_are_refused(institution, make_credential):
    make_credential(institution, secret=PLANTED_SECRET)
    for lookup in ("secret", "secret__contains", "client_id__startswith", "secret__in"):
        with pytest.raises(FieldError, match="encrypted"):
            CD2Credential.objects.filter(**{lookup: PLANTED_SECRET}).exists()
    # isnull compares no ciphertext and stays allowed.
    assert CD2Credential.objects.filter(secret__isnull=False).count() == 1


def _encryption_errors(tag: str) -> dict[str, list[str]]:
    """The credentials.E01x errors Django's check framework reports for `tag`, by id: as `manage.py check` runs them."""
    found: dict[str, list[str]] = {}
    for error in run_checks(tags=[tag]):
        if error.id in ("credentials.E011", "credentials.E012", "credentials.E013"):
            found.setdefault(error.id, []).append(error.msg)
    return found


def test_the_project_orders_searches_and_filters_by_no_encrypted_field():
    assert _encryption_errors(checks.Tags.models) == {}
    assert _encryption_errors(checks.Tags.admin) == {}


def test_the_system_check_refuses_a_meta_ordering_by_an_encrypted_field(monkeypatch):
    # Ciphertext order is random: the check stands in for a refusal at run time, which Django has no public hook for.
    monkeypatch.setattr(CD2Credential._meta, "ordering", ("-secret", "pk"))
    monkeypatch.setattr(ReminderLog._meta, "ordering", ("credential__client_id",))  # across a relation
    monkeypatch.setattr(ServiceAccount._meta, "ordering", (Lower("webhook_secret").desc(),))  # in an expression

    messages = _encryption_errors(checks.Tags.models)["credentials.E011"]

    assert len(messages) == 3
    assert any("credentials.CD2Credential.Meta.ordering orders by '-secret'" in m for m in messages)
    assert any(
        "'credential__client_id', the encrypted field credentials.CD2Credential.client_id" in m for m in messages
    )
    assert any("api.ServiceAccount.webhook_secret" in m for m in messages)


def test_the_system_check_refuses_an_admin_that_sorts_searches_or_filters_by_an_encrypted_field(monkeypatch):
    key_admin = type(admin.site.get_model_admin(CD2Credential))

    @admin.display(ordering="-secret")
    def revealed(obj):  # never rendered: only its ordering is read
        return ""

    monkeypatch.setattr(key_admin, "ordering", ("hint", "client_id"))
    monkeypatch.setattr(key_admin, "list_display", ("hint", "secret", revealed, "submitted_at"))
    monkeypatch.setattr(key_admin, "search_fields", ("hint", "=client_id"))
    monkeypatch.setattr(key_admin, "list_filter", ("status", ("secret", admin.EmptyFieldListFilter)))
    key_history = next(
        inline for inline in admin.site.get_model_admin(Institution).inlines if inline.model is CD2Credential
    )
    monkeypatch.setattr(key_history, "ordering", ("-client_id",))

    errors = _encryption_errors(checks.Tags.admin)

    assert sorted(errors) == ["credentials.E012", "credentials.E013"]
    sorting = errors["credentials.E012"]
    assert len(sorting) == 4
    assert any(".ordering orders by 'client_id'" in m for m in sorting)
    assert any("list_display column 'secret' sorts by 'secret'" in m for m in sorting)
    assert any("list_display column 'revealed' sorts by '-secret'" in m for m in sorting)
    assert any(f"{key_history.__qualname__}.ordering" in m for m in sorting)
    assert len(errors["credentials.E013"]) == 2  # the search and the filter

    # A column left out of sortable_by cannot be sorted: nothing to refuse.
    monkeypatch.setattr(key_admin, "sortable_by", ("hint", "submitted_at"))
    assert len(_encryption_errors(checks.Tags.admin)["credentials.E012"]) == 2


@isolate_apps("credentials")
def test_an_encrypted_field_cannot_be_indexed_or_unique():
    from django.db import models

    from credentials.fields import EncryptedTextField

    class Bad(models.Model):  # noqa: DJ008
        token = EncryptedTextField(unique=True)
        other = EncryptedTextField(db_index=True)

        class Meta:
            app_label = "credentials"

    ids = [e.id for e in Bad._meta.get_field("token").check()] + [e.id for e in Bad._meta.get_field("other").check()]
    assert ids.count("credentials.E010") == 2


def test_the_system_check_rejects_a_malformed_key():
    with override_settings(FERNET_KEYS=[Fernet.generate_key().decode(), "not-a-key"]):
        errors = check_fernet_keys()
    assert [e.id for e in errors] == ["credentials.E001"]
    assert "entry 2" in errors[0].msg and "generate_encryption_key" in errors[0].msg


def test_the_system_check_passes_with_good_keys():
    with override_settings(FERNET_KEYS=[Fernet.generate_key().decode(), Fernet.generate_key().decode()]):
        assert check_fernet_keys() == []


def test_the_system_check_warns_when_stored_values_do_not_decrypt(institution, make_credential):
    make_credential(institution)
    assert check_stored_values_decrypt() == []
    with override_settings(FERNET_KEYS=[Fernet.generate_key().decode()]):
        warnings = check_stored_values_decrypt()
    assert {w.id for w in warnings} == {"credentials.W001"}
    assert any("credentials_cd2credential.secret" in w.msg for w in warnings)


def test_generate_encryption_key_prints_a_usable_key(capsys):
    call_command("generate_encryption_key")
    key = capsys.readouterr().out.strip()
    Fernet(key.encode())  # raises if malformed
    call_command("generate_encryption_key")
    assert capsys.readouterr().out.strip() != key
