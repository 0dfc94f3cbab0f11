from __future__ import annotations

import datetime as dt
import getpass
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from credentials.cd2 import Verdict, check_key
from credentials.models import AuditEvent, CD2Credential
from credentials.services.keys import credential_create, credential_set_status
from credentials.validators import CleanKey
from devtools.fake_gateway import FakeGateway
from tests.conftest import PLANTED_SECRET

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db

CLIENT_ID = "us-east-1#handoff-0000-4000-8000-000000000042"
# Quotes, $, backticks and a backslash: what a careless `echo` or unquoted
# assignment would mangle or execute.
TRICKY_SECRET = PLANTED_SECRET + "'$(touch /tmp/pwned)\"`id`\\;x"


@pytest.fixture(autouse=True)
def engineer(make_staff):
    """The staff member every hand-off here runs as, unless a test says otherwise."""
    return make_staff("Data engineer", username="ada")


@pytest.fixture
def keyed(institution, make_credential):
    return make_credential(institution, client_id=CLIENT_ID, secret=TRICKY_SECRET)


def handoff(*args: str, as_user: str | None = "ada", reason: str | None = "nightly load") -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    options = [
        *(["--as", as_user] if as_user is not None else []),
        *(["--reason", reason] if reason is not None else []),
    ]
    call_command("cd2_credentials", *args, *options, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def refusals() -> list[AuditEvent]:
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.HANDOFF).exists()
    return list(AuditEvent.objects.filter(kind=AuditEvent.Kind.HANDOFF_REFUSED).order_by("pk"))


def read_back(shell_snippet: str, env_text: str, tmp_path) -> tuple[str, str]:
    """Load the output in a real bash the way a pipeline would, and print the two variables back."""
    path = tmp_path / "cd2.env"
    path.write_text(env_text)
    script = shell_snippet + '; printf "%s\\n%s" "$DAP_CLIENT_ID" "$DAP_CLIENT_SECRET"'
    result = subprocess.run(["bash", "-c", script, "bash", str(path)], capture_output=True, text=True, check=True)
    client_id, secret = result.stdout.split("\n", 1)
    return client_id, secret


@pytest.mark.parametrize("loader", ['set -a; source "$1"; set +a', 'eval "$(cat "$1")"'])
def test_the_env_output_authenticates_against_the_gateway_once_loaded_by_bash(keyed, tmp_path, loader):
    out, _ = handoff("northfield", "--format", "env")
    client_id, secret = read_back(loader, out, tmp_path)
    assert (client_id, secret) == (CLIENT_ID, TRICKY_SECRET)
    with FakeGateway(include_demo_keys=False) as gateway:
        gateway.add_key(CLIENT_ID, TRICKY_SECRET)
        assert check_key(client_id=client_id, secret=secret, base_url=gateway.url).verdict is Verdict.OK


def test_the_json_output_holds_the_key_its_expiry_and_region(keyed):
    out, _ = handoff("northfield", "--format", "json")
    payload = json.loads(out)
    assert payload == {
        "client_id": CLIENT_ID,
        "client_secret": TRICKY_SECRET,
        "expires_on": keyed.expires_on.isoformat(),
        "region": "us-east-1",
    }


def test_each_handoff_writes_exactly_one_audit_event_naming_the_staff_member_and_the_os_user(keyed, engineer):
    handoff("northfield")
    event = AuditEvent.objects.get()
    assert event.kind == AuditEvent.Kind.HANDOFF
    assert event.credential == keyed
    assert (event.actor, event.actor_username) == (engineer, "ada")
    assert getpass.getuser() in event.actor_label
    assert event.reason == "nightly load"
    assert TRICKY_SECRET not in json.dumps(event.detail) and CLIENT_ID not in json.dumps(event.detail)


def _expire(credential: CD2Credential) -> None:
    CD2Credential.objects.filter(pk=credential.pk).update(expires_on=dt.date.today() - dt.timedelta(days=1))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_expire, "expired on"),
        (lambda c: credential_set_status(credential=c, status="revoked", reason="t"), "is revoked"),
        (lambda c: credential_set_status(credential=c, status="invalid", reason="t"), "is invalid"),
    ],
)
def test_an_unusable_key_is_refused_unless_allow_expired(keyed, spoil, message):
    spoil(keyed)
    with pytest.raises(CommandError, match=message):
        handoff("northfield")
    assert len(refusals()) == 1
    assert message in refusals()[0].detail["refused"]

    out, err = handoff("northfield", "--allow-expired")
    assert TRICKY_SECRET.replace("'", "'\"'\"'") in out
    assert "Warning" in err
    assert AuditEvent.objects.get(kind=AuditEvent.Kind.HANDOFF).detail["allow_expired"] is True


def test_no_key_at_all_exits_non_zero_with_a_clear_message(institution):
    with pytest.raises(CommandError, match="Northfield University has no usable CD2 key") as info:
        handoff("northfield")
    assert info.value.returncode != 0
    with pytest.raises(CommandError, match="No institution has the slug 'nowhere'"):
        handoff("nowhere")
    assert [(e.institution, e.detail["institution_slug"]) for e in refusals()] == [
        (institution, "northfield"),
        (None, "nowhere"),
    ]


def test_a_real_run_without_a_usable_key_exits_non_zero_and_prints_nothing_on_stdout(tmp_path):
    # A fresh database of its own (SQLite under tmp_path): the process cannot see the test database.
    env = {**os.environ, "DEBUG": "true", "VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True, capture_output=True)
    result = subprocess.run(
        [*manage, "cd2_credentials", "nowhere", "--as", "nobody", "--reason", "nightly load"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "'nobody' is not an active staff user allowed to hand off keys" in result.stderr


def test_an_institution_with_only_a_pending_key_gets_nothing(institution, make_key):
    credential_create(institution=institution, key=make_key(), source="admin", status="pending_verification")
    with pytest.raises(CommandError, match="has no usable CD2 key"):
        handoff("northfield", "--allow-expired")
    assert len(refusals()) == 1


def test_the_newest_active_key_is_handed_out_not_a_superseded_one(institution, make_credential):
    make_credential(institution, client_id="us-east-1#old-key")
    make_credential(institution, client_id=CLIENT_ID)
    out, _ = handoff("northfield", "--format", "json")
    assert json.loads(out)["client_id"] == CLIENT_ID


def test_a_key_revoked_after_a_newer_one_is_not_replaced_by_the_older(institution, today):
    # An old superseded key must never come back as "the" key.
    old = credential_create(
        institution=institution,
        key=CleanKey(client_id="us-east-1#old", secret="old-s", expires_on=today + dt.timedelta(days=90)),
        source="admin",
        status="active",
    )
    new = credential_create(
        institution=institution,
        key=CleanKey(client_id=CLIENT_ID, secret="new-s", expires_on=today + dt.timedelta(days=300)),
        source="admin",
        status="active",
    )
    credential_set_status(credential=new, status="revoked", reason="t")
    old.refresh_from_db()
    assert old.status == "superseded"
    out, _ = handoff("northfield", "--format", "json", "--allow-expired")
    assert json.loads(out)["client_id"] == CLIENT_ID


@pytest.mark.parametrize("option", ["--as", "--reason"])
def test_the_command_requires_a_staff_username_and_a_reason(keyed, option):
    kwargs = {"as_user": None} if option == "--as" else {"reason": None}
    with pytest.raises(CommandError, match=f"the following arguments are required: {option}"):
        handoff("northfield", **kwargs)
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    ("who", "setup"),
    [
        ("nobody-by-that-name", None),
        ("viewer", lambda make_staff: make_staff("Viewer", username="viewer")),
        ("customer-success", lambda make_staff: make_staff("Customer success", username="customer-success")),
        ("gone", lambda make_staff: make_staff("Data engineer", username="gone", is_active=False)),
    ],
)
def test_only_an_active_staff_member_with_the_handoff_permission_gets_a_key_and_refusals_are_audited(
    keyed, make_staff, who, setup
):
    user = setup(make_staff) if setup else None
    with pytest.raises(CommandError, match=f"'{who}' is not an active staff user allowed to hand off keys") as info:
        handoff("northfield", as_user=who)
    assert TRICKY_SECRET not in str(info.value)
    (event,) = refusals()
    assert (event.actor, event.detail["as"], event.institution, event.reason) == (
        user,
        who,
        keyed.institution,
        "nightly load",
    )
    assert getpass.getuser() in event.actor_label


def test_a_reason_that_explains_nothing_is_refused_and_audited(keyed, engineer):
    with pytest.raises(CommandError, match="Give a reason for the hand-off"):
        handoff("northfield", reason=" x ")
    (event,) = refusals()
    assert event.actor == engineer and "Give a reason" in event.detail["refused"]
