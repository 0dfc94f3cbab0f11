"""End to end: the reference client (examples/cd2_pull.py), given only a token and the registry's URL,
fetches a key from a running registry (live_server) and runs the official `dap` client with it against
the project's fake CD2 gateway, then reports the outcome back.

The official client (instructure-dap-client) is not a requirement of the registry: .ci/run installs it
into its own virtualenv and points DAP_BIN at it. Without it the dap test skips (fails under CI); the
client's registry side is still tested with a stand-in dap that only checks what it was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api.models import Scope, ServiceAccount, SyncReport
from api.services import api_token_issue
from credentials.models import AuditEvent, CD2Credential
from tests.conftest import PLANTED_CLIENT_ID, PLANTED_SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "examples" / "cd2_pull.py"


def _dap_bin() -> str | None:
    return os.environ.get("DAP_BIN") or shutil.which("dap")


def _run_client(*, live_server, gateway, token: str, slug: str, dap: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CD2_REGISTRY_URL": live_server.url,
        "CD2_REGISTRY_TOKEN": token,
        "DAP_API_URL": gateway.url,
    }
    return subprocess.run(
        [sys.executable, str(CLIENT), slug, "--dap", dap],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def pipeline(institution, make_credential, cd2_gateway, isolated_cache):
    """An active key the fake gateway accepts, and a token that may read it and report on it."""
    key = make_credential(institution, client_id=PLANTED_CLIENT_ID, secret=PLANTED_SECRET)
    account = ServiceAccount.objects.create(name="e2e-pipeline")
    account.institutions.set([institution])
    issued = api_token_issue(account=account, scopes=[Scope.KEYS_READ, Scope.SYNCS_WRITE])
    return issued.plaintext, key


def test_the_official_dap_client_lists_tables_with_the_key_from_the_api(
    live_server, cd2_gateway, pipeline, institution
):
    dap = _dap_bin()
    if dap is None:
        if os.environ.get("CI"):
            pytest.fail("DAP_BIN is not set: .ci/run installs instructure-dap-client into its own venv")
        pytest.skip("instructure-dap-client is not installed (set DAP_BIN to its dap command)")
    token, key = pipeline
    done = _run_client(live_server=live_server, gateway=cd2_gateway, token=token, slug=institution.slug, dap=dap)
    assert done.returncode == 0, done.stderr
    assert "accounts" in done.stdout.split() and "courses" in done.stdout.split()
    assert PLANTED_SECRET not in done.stdout + done.stderr
    assert SyncReport.objects.get().outcome == "ok"
    assert CD2Credential.objects.get(pk=key.pk).last_pulled_at is not None
    assert AuditEvent.objects.get(kind=AuditEvent.Kind.HANDOFF).actor_label == "API: e2e-pipeline"


def test_the_reference_client_hands_the_key_to_dap_only_through_its_environment(
    live_server, cd2_gateway, pipeline, institution, tmp_path
):
    token, _ = pipeline
    stand_in = tmp_path / "dap"
    stand_in.write_text(
        "#!/bin/sh\n"
        f'[ "$DAP_CLIENT_ID" = "{PLANTED_CLIENT_ID}" ] && [ "$DAP_CLIENT_SECRET" = "{PLANTED_SECRET}" ] '
        '&& [ -z "$CD2_REGISTRY_TOKEN" ] && echo "args: $*" && exit 0\n'
        "echo 'Invalid client credentials' >&2; exit 5\n"
    )
    stand_in.chmod(0o755)
    done = _run_client(
        live_server=live_server, gateway=cd2_gateway, token=token, slug=institution.slug, dap=str(stand_in)
    )
    assert done.returncode == 0, done.stderr
    assert "args: --no-tracking --non-interactive list --namespace canvas" in done.stdout
    assert SyncReport.objects.get().outcome == "ok"

    # A dap that fails to log in is reported as auth_failed (the registry then checks the key).
    stand_in.write_text("#!/bin/sh\necho 'ERROR - Invalid client credentials' >&2; exit 5\n")
    done = _run_client(
        live_server=live_server, gateway=cd2_gateway, token=token, slug=institution.slug, dap=str(stand_in)
    )
    assert done.returncode == 5
    assert SyncReport.objects.order_by("-pk").first().outcome == "auth_failed"
