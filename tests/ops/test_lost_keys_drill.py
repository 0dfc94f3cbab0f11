"""The lost-FERNET_KEYS drill (docs/RUNBOOK.md, "When FERNET_KEYS is lost"), on PostgreSQL, with real processes.

A registry whose keys were written under a key that is now lost (one
institution's key was already re-encrypted under the new key) refuses to
start. The runbook's procedure, followed as written: mark_keys_lost (a
count first, then --confirm), web and a real Celery worker start,
send_links_to_all asks every served institution for a new key, and an SMTP
server on loopback receives one working link per served institution.
Nothing readable is lost: the re-encrypted key still reads, the
institutions, contacts, users and audit log are all there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from aiosmtpd.controller import Controller
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connection
from psycopg import sql

from tests.outage.servers import Inbox, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="the drill runs the processes against a PostgreSQL database of its own (CI; set DATABASE_URL)",
)

SEED_UNDER_THE_LOST_KEY = """
import datetime as dt
from django.utils import timezone
from api.models import ServiceAccount
from api.webhooks import webhook_secret_rotate
from credentials.services.keys import credential_create
from credentials.validators import CleanKey
from institutions.models import Contact, Institution
from tests.conftest import PASSED_CHECK

def institution(slug, status="active"):
    i = Institution.objects.create(name=slug.title(), slug=slug, canvas_domain=f"{slug}.instructure.com", status=status)
    Contact.objects.create(institution=i, name="Admin", email=f"admin@{slug}.example.edu")
    return i

def key(i, n, *, status="active", days=365):
    return credential_create(institution=i, source="admin", status=status,
        check=PASSED_CHECK if status == "active" else None,
        key=CleanKey(client_id=f"us-east-1#drill-{n:04d}", secret=f"DrillSecret-{n}",
                     expires_on=timezone.localdate() + dt.timedelta(days=days)))

north = institution("north")
key(north, 1)  # superseded by the next
key(north, 2)
key(institution("lake", status="onboarding"), 3, status="pending_verification")
key(institution("paused", status="paused"), 4)
institution("prairie")  # served, never had a key
institution("harbour")
account = ServiceAccount.objects.create(name="airflow", webhook_url="https://hooks.example.org/cd2")
account.institutions.set([north])
webhook_secret_rotate(account=account, actor_label="drill")
"""

# After a rotation had begun: FERNET_KEYS="<new>,<lost>" writes under the new key.
SEED_UNDER_THE_NEW_KEY = """
import datetime as dt
from django.utils import timezone
from credentials.services.keys import credential_create
from credentials.validators import CleanKey
from institutions.models import Institution
from tests.conftest import PASSED_CHECK
credential_create(institution=Institution.objects.get(slug="harbour"), source="admin", status="active",
    check=PASSED_CHECK, key=CleanKey(client_id="us-east-1#drill-0005", secret="DrillSecret-5",
    expires_on=timezone.localdate() + dt.timedelta(days=365)))
"""

COUNTS = """
import json
from django.contrib.auth import get_user_model
from credentials.models import AuditEvent, CD2Credential
from institutions.models import Contact, Institution
print(json.dumps({
    "institutions": Institution.objects.count(), "contacts": Contact.objects.count(),
    "users": get_user_model().objects.count(), "keys": CD2Credential.objects.count(),
    "audit": AuditEvent.objects.count(),
}))
"""

AFTER = """
import json
from api.models import ServiceAccount
from api.services import ApiRefused, api_key_read
from api.models import ApiToken, Scope
from api.services import api_token_issue
from credentials.models import CD2Credential, AuditEvent
from credentials.services.keys import credential_create
from credentials.services.staff import StaffActionRefused, credential_handoff_record
from credentials.validators import CleanKey
from institutions.models import Institution
from django.utils import timezone
import datetime as dt

keys = {k.hint[-4:]: k for k in CD2Credential.objects.order_by("pk")}
out = {
    "status": {hint: k.status for hint, k in keys.items()},
    "wiped": sorted(hint for hint, k in keys.items() if k.client_id is None and k.secret is None
                    and k.client_id_index is None),
    "harbour_secret": keys["0005"].secret,
    "states": dict(Institution.objects.values_list("slug", "key_condition")),
    "lost_audits": AuditEvent.objects.filter(kind="keys_lost").count(),
    "webhook_secret_set": ServiceAccount.objects.get().webhook_secret_set_at is not None,
}
try:
    credential_handoff_record(credential_id=keys["0002"].pk, actor_label="drill")
except StaffActionRefused as exc:
    out["handoff"] = str(exc)
token = api_token_issue(account=ServiceAccount.objects.get(), scopes=[Scope.KEYS_READ]).token
try:
    api_key_read(token=token, institution_slug="north", ip_address=None)
except ApiRefused as exc:
    out["api"] = exc.code
# The customer may hand the same key over again: its blind index went with it.
again = credential_create(institution=Institution.objects.get(slug="north"), source="admin", key=CleanKey(
    client_id="us-east-1#drill-0002", secret="DrillSecret-2", expires_on=timezone.localdate() + dt.timedelta(days=300)))
out["same_key_again"] = again.status
print(json.dumps(out))
"""


def _server_url(database: str) -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s["PASSWORD"] else ""
    return f"postgres://{s['USER']}{password}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{database}"


@pytest.fixture
def drill_database():
    name = f"lost_keys_drill_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_server_url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _server_url(name)
    finally:
        with psycopg.connect(_server_url("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller
    controller.stop()


def test_a_registry_whose_keys_cannot_be_read_asks_every_served_institution_for_a_new_key(
    drill_database, smtp, tmp_path
):
    lost, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    env = {k: v for k, v in os.environ.items() if k not in ("FERNET_KEYS", "CI", "CELERY_BROKER_URL", "CACHE_URL")}
    env.update(
        DEBUG="false",
        SECRET_KEY="drill-" + "s" * 50,
        CLIENT_ID_INDEX_KEY="drill-index-" + "i" * 32,
        ALLOWED_HOSTS="registry.example.com",
        SITE_URL="https://registry.example.com",
        VAR_DIR=str(tmp_path),
        DATABASE_URL=drill_database,
        CACHE_URL="locmemcache://",
        CELERY_BROKER_URL="filesystem://",
        EMAIL_URL=f"smtp://127.0.0.1:{smtp.port}",
        NOTICE_LEASE_SECONDS="30",
    )

    def run(*args, keys: str = new, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            args, cwd=ROOT, env={**env, "FERNET_KEYS": keys}, capture_output=True, text=True, timeout=300
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def manage(*args, **kwargs):
        return run(sys.executable, "manage.py", *args, **kwargs)

    def counts() -> dict:
        return json.loads(manage("shell", "-c", COUNTS).stdout.strip().splitlines()[-1])

    manage("migrate", "--noinput", keys=lost)
    manage("shell", "-c", SEED_UNDER_THE_LOST_KEY, keys=lost)
    manage("shell", "-c", SEED_UNDER_THE_NEW_KEY, keys=f"{new},{lost}")
    before = counts()

    # The key is lost: FERNET_KEYS holds only the new one. Nothing starts, and asking for keys is refused.
    web = run(sys.executable, "-c", "import edpotential.wsgi", check=False)
    assert web.returncode != 0 and "Refusing to start" in web.stderr
    worker_args = [sys.executable, "-m", "celery", "-A", "edpotential", "worker", "--pool", "solo"]
    worker_args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]
    refused = run(*worker_args, check=False)
    assert refused.returncode != 0 and "refused to start" in refused.stderr
    asked = manage("send_links_to_all", "--reason", "encryption key lost", check=False)
    assert asked.returncode != 0 and "mark_keys_lost" in asked.stderr

    # The runbook: count first, a wrong confirmation changes nothing, then the right one.
    survey = manage("mark_keys_lost", "--reason", "INC-7 FERNET_KEYS lost").stdout
    assert "credentials.CD2Credential: 4 of 5 row(s) cannot be read" in survey
    assert "api.ServiceAccount: 1 of 1 row(s) cannot be read" in survey
    assert "--confirm 5" in survey
    wrong = manage("mark_keys_lost", "--reason", "INC-7 FERNET_KEYS lost", "--confirm", "4", check=False)
    assert wrong.returncode != 0 and "Nothing was changed" in wrong.stderr
    assert counts() == before
    done = manage("mark_keys_lost", "--reason", "INC-7 FERNET_KEYS lost", "--confirm", "5").stdout
    assert "Marked 4 key(s) lost" in done and "3 institution(s) now have no key" in done

    # Web and worker start; every served institution is asked for a new key, and each is mailed once.
    assert run(sys.executable, "-c", "import edpotential.wsgi").returncode == 0
    queued = manage("send_links_to_all", "--reason", "encryption key lost").stdout
    assert "Queued a submission link for 4 institution(s)" in queued
    worker = subprocess.Popen(
        worker_args,
        cwd=ROOT,
        env={**env, "FERNET_KEYS": new},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: len(smtp.handler.messages) >= 4 or worker.poll() is not None, timeout=120, what="4 links")
        assert worker.poll() is None, "the worker stopped"
        time.sleep(1)  # a fifth mail would have arrived by now
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    mailed = sorted(address for rcpt, _ in smtp.handler.messages for address in rcpt)
    assert mailed == [f"admin@{slug}.example.edu" for slug in ("harbour", "lake", "north", "prairie")]
    assert all("/k/" in text for _, text in smtp.handler.messages)

    # Nothing else lost; the lost keys say so everywhere.
    after = json.loads(manage("shell", "-c", AFTER).stdout.strip().splitlines()[-1])
    assert after["status"] == {
        "0001": "superseded",  # history keeps its status; only its unreadable values are gone
        "0002": "lost",
        "0003": "lost",
        "0004": "lost",
        "0005": "active",
    }
    assert after["wiped"] == ["0001", "0002", "0003", "0004"]
    assert after["harbour_secret"] == "DrillSecret-5"
    assert after["states"] == {"north": "lost", "lake": "lost", "paused": "lost", "prairie": "missing", "harbour": "ok"}
    assert after["lost_audits"] == 5  # one per key and the summary
    assert after["webhook_secret_set"] is False
    assert "Ask North for a new key" in after["handoff"]
    assert after["api"] == "key_lost"
    assert after["same_key_again"] == "pending_verification"
    final = counts()
    assert {k: final[k] for k in ("institutions", "contacts", "users")} == {
        k: before[k] for k in ("institutions", "contacts", "users")
    }
    assert final["keys"] == before["keys"] + 1  # the key handed over again above
    assert final["audit"] > before["audit"]
