"""The demo `make run` loads: every state staff will meet, and a check of every key keeps it so.

The fake gateway is started with the command Procfile.dev gives its `cd2`
process, on a free port, reading the keys file load_demo_data wrote.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Count

from credentials.models import CD2Credential, Notice, ReminderLog, SubmissionLink
from credentials.selectors import institutions_with_key_status
from credentials.services.pending import credential_verify_pending
from devtools.demo_data import DEMO_INSTITUTIONS, DEMO_SLUGS, demo_gateway_keys, demo_key
from institutions.models import Institution, KeyState
from tests.conftest import delivered

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_settings(settings, tmp_path):
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path
    return settings


def load_demo(*args: str) -> str:
    out = StringIO()
    call_command("load_demo_data", *args, stdout=out)
    return out.getvalue()


def key_states() -> dict[str, str]:
    return dict(institutions_with_key_status(queryset=Institution.objects.all()).values_list("slug", "key_state"))


def promised_states() -> dict[str, str]:
    return {demo.slug: demo.key_state for demo in DEMO_INSTITUTIONS}


def procfile_command(name: str, **env: str) -> list[str]:
    """The Procfile.dev command of process `name`, with its ${VAR:-default}s filled from `env`."""
    lines = dict(line.split(": ", 1) for line in (ROOT / "Procfile.dev").read_text().splitlines() if ": " in line)

    def fill(match: re.Match) -> str:
        return env.get(match.group(1), match.group(2))

    words = shlex.split(re.sub(r"\$\{(\w+):-([^}]*)\}", fill, lines[name]))
    return words[1:] if words[0] == "exec" else words


@pytest.fixture
def demo_with_gateway(demo_settings, tmp_path):
    """make run's order: load the demo, then start the fake gateway as Procfile.dev does (port 0: a free one)."""
    load_demo()
    command = procfile_command("cd2", CD2_PORT="0", VAR_DIR=str(tmp_path))
    assert command[:3] == ["python", "-m", "devtools.fake_gateway"]
    process = subprocess.Popen(
        [sys.executable, *command[1:]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "CD2_FAKE_KEYS": ""},
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        demo_settings.CD2_API_URL = url
        yield url
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_the_demo_shows_every_state_staff_will_meet(demo_settings):
    load_demo()

    assert key_states() == promised_states()
    # Every state, none left at 0; but "lost", which only a lost FERNET_KEYS makes (mark_keys_lost).
    assert set(promised_states().values()) == set(KeyState.values) - {KeyState.LOST}
    states = dict(
        ReminderLog.objects.values_list("notice__state").annotate(n=Count("pk")).values_list("notice__state", "n")
    )
    assert states[Notice.State.SENT] >= 3 and states[Notice.State.FAILED] == 1
    failed = ReminderLog.objects.get(notice__state=Notice.State.FAILED)
    assert failed.credential.institution.slug == "harbour-city-schools" and "550" in failed.notice.last_error
    # Refused, then refused again past its retry window; staff read it in words, the raw reply stays on the notice.
    assert failed.attempts() == 2 and failed.delivery() == "Failed: the address was refused: user unknown"
    assert CD2Credential.objects.filter(status=CD2Credential.Status.PENDING_VERIFICATION).count() == 1


def test_checking_every_demo_key_leaves_the_demo_as_promised(demo_with_gateway, django_capture_on_commit_callbacks):
    pending = CD2Credential.objects.get(status=CD2Credential.Status.PENDING_VERIFICATION)
    out = StringIO()

    # The notices to contacts of a failed key are queued on commit: run those callbacks too.
    with django_capture_on_commit_callbacks(execute=True):
        call_command("verify_credentials", stdout=out)  # what "Check key now" and the 03:30 job do, key by key
        credential_verify_pending(credential_id=pending.pk)  # what the sweep of pending keys does

    passing = sum(1 for demo in DEMO_INSTITUTIONS if demo.days is not None and demo.check == "passes")
    assert f"Checked {passing} key(s): {passing} ok, 0 invalid, 0 not checked" in out.getvalue()
    assert key_states() == promised_states()
    assert delivered() == []  # nobody was told their key stopped working
    for key in CD2Credential.objects.filter(status=CD2Credential.Status.ACTIVE):
        assert key.last_verdict == "ok", key.institution.slug
    pending.refresh_from_db()
    assert pending.status == CD2Credential.Status.PENDING_VERIFICATION and pending.last_verdict == "unavailable"


def test_an_unknown_key_still_fails_at_the_demo_gateway(demo_with_gateway, django_capture_on_commit_callbacks):
    # The gateway knows exactly the demo keys: a staff member's new key of their own is checked for real.
    lakeside = CD2Credential.objects.get(institution__slug="lakeside-college", status=CD2Credential.Status.ACTIVE)
    CD2Credential.objects.filter(pk=lakeside.pk).update(secret="not-the-demo-secret")

    with django_capture_on_commit_callbacks(execute=True):
        call_command("verify_credentials", "--institution", "lakeside-college", stdout=StringIO())

    assert key_states()["lakeside-college"] == KeyState.FAILING
    assert len(delivered()) == 1  # production behaviour: the contacts get a fresh link


def test_the_keys_file_lists_exactly_the_passing_demo_keys_and_no_other(demo_settings, tmp_path):
    load_demo()

    lines = [line for line in (tmp_path / "fake-gateway-keys.txt").read_text().splitlines() if line[:1] != "#"]
    assert dict(line.split(":", 1) for line in lines) == demo_gateway_keys()
    failing = next(demo for demo in DEMO_INSTITUTIONS if demo.key_state == KeyState.FAILING)
    assert demo_key(failing)[0] not in demo_gateway_keys()


def test_rerunning_keeps_the_data_and_reset_starts_afresh(demo_settings):
    load_demo()
    Institution.objects.filter(slug="prairie-state-tech").update(name="Renamed by a newcomer")
    ReminderLog.objects.filter(notice__state=Notice.State.FAILED).delete()

    assert "0 institution(s) added" in load_demo()
    assert Institution.objects.get(slug="prairie-state-tech").name == "Renamed by a newcomer"

    output = load_demo("--reset")

    assert f"{len(DEMO_SLUGS)} demo institution(s) deleted" in output
    assert Institution.objects.get(slug="prairie-state-tech").name == "Prairie State Technical College"
    assert ReminderLog.objects.filter(notice__state=Notice.State.FAILED).count() == 1
    assert key_states() == promised_states()


def test_a_rerun_over_old_random_demo_keys_says_to_reset(demo_settings):
    load_demo()
    CD2Credential.objects.filter(institution__slug="lakeside-college").update(client_id="us-east-1#old-random-key")

    assert "lakeside-college: the active key is not the demo key" in load_demo()


def test_load_demo_data_and_reset_refuse_without_debug(demo_settings):
    demo_settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG"):
        load_demo("--reset")
    assert Institution.objects.count() == 0


def test_the_demo_writes_through_the_services_so_the_key_summary_is_in_step(demo_settings):
    """Issue 25 item 9: keys, reminders and their links as production writes them; check_key_summary is clean."""
    load_demo()

    out = StringIO()
    call_command("check_key_summary", stdout=out)  # raises CommandError on drift
    assert "all in step" in out.getvalue()
    reminded = {demo.slug for demo in DEMO_INSTITUTIONS if demo.reminders and demo.key_state != KeyState.FAILING}
    assert reminded == {"lakeside-college", "harbour-city-schools", "st-brendans-academy"}
    assert set(Institution.objects.filter(key_reminded_unanswered=True).values_list("slug", flat=True)) == reminded
    # Each step as the outbox left it, and its mail's link: one live link per institution, the newest.
    for demo in DEMO_INSTITUTIONS:
        states = dict(
            Notice.objects.filter(institution__slug=demo.slug, kind=Notice.Kind.REMINDER).values_list(
                "reminder__threshold", "state"
            )
        )
        assert states == dict(demo.reminders), demo.slug
        links = SubmissionLink.objects.filter(institution__slug=demo.slug)
        sent = sum(1 for _, state in demo.reminders if state == Notice.State.SENT)
        assert links.count() == sent, demo.slug
        assert links.filter(revoked_at__isnull=True, used_at__isnull=True).count() == (1 if sent else 0), demo.slug
    failed = Notice.objects.get(institution__slug="harbour-city-schools", state=Notice.State.FAILED)
    assert "550" in failed.last_error and failed.attempts == 2
