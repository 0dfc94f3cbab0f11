"""The test OpenID provider (tests/oidc_provider/provider.mjs, node's oidc-provider) as a Python object.

`OidcProvider.start()` runs it on a free loopback port; the tests set people
(`person`, `update`, `remove`) and faults in the next ID token
(`fault_next_id_token`) through its /test/ API. `sign_in(client, ...)` goes
through the real flow with Django's test client on our side and `requests`
in the provider's sign-in page, as a browser would.

Needs node and `npm ci --prefix tests/oidc_provider` (make test does it).
Without them the SSO tests skip locally and fail in CI.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

HERE = Path(__file__).resolve().parent.parent / "oidc_provider"
CLIENT_ID = "cd2-registry"
CLIENT_SECRET = "test-client-secret-not-for-production"
START_SECONDS = 20

# The groups the tests' settings map to our roles (see sso_settings in tests/conftest.py).
GROUP_ROLES = {
    "cd2-viewers": "Viewer",
    "cd2-cs": "Customer success",
    "cd2-data": "Data engineer",
    "cd2-admins": "Superuser",
}
ROLE_GROUP = {role: group for group, role in GROUP_ROLES.items()}
DOMAIN = "uni.example"


def _unavailable(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"The test OpenID provider cannot start: {why}")
    pytest.skip(f"The test OpenID provider cannot start: {why}")


class OidcProvider:
    def __init__(self, process: subprocess.Popen, issuer: str) -> None:
        self.process = process
        self.issuer = issuer

    @classmethod
    def start(cls) -> OidcProvider:
        node = shutil.which("node")
        if node is None:
            _unavailable("node is not installed")
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            _unavailable("run `npm ci --prefix tests/oidc_provider` (make test does)")
        env = {
            **os.environ,
            "CLIENT_ID": CLIENT_ID,
            "CLIENT_SECRET": CLIENT_SECRET,
            # Our clock, which tests/clock/sitecustomize.py may have moved: the provider dates tokens by it.
            "PROVIDER_NOW_MS": str(int(time.time() * 1000)),
        }
        process = subprocess.Popen(
            [node, str(HERE / "provider.mjs")],
            cwd=HERE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                line = process.stdout.readline()
                if line.startswith("READY "):
                    return cls(process, line.split()[1])
                if not line and process.poll() is not None:
                    break
        process.kill()
        _unavailable(f"no READY line within {START_SECONDS} s (exit code {process.poll()})")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # -- the test-control API ----------------------------------------------

    def _call(self, method: str, path: str, json: dict | None = None):
        response = requests.request(method, self.issuer + path, json=json, timeout=5)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self._call("POST", "/test/reset", {})
        self._call("POST", "/test/clock", {"now_ms": int(time.time() * 1000)})

    def person(
        self,
        sub: str,
        *,
        groups: list[str] | None = None,
        amr: list[str] | None = None,
        email: str | None = None,
        email_verified: bool = True,
        hd: str | None = None,
    ) -> str:
        self._call(
            "PUT",
            f"/test/users/{sub}",
            {
                "email": email or f"{sub}@{DOMAIN}",
                "email_verified": email_verified,
                "groups": groups,
                "amr": amr if amr is not None else ["pwd", "mfa"],
                **({"hd": hd} if hd else {}),
            },
        )
        return sub

    def update(self, sub: str, **fields) -> None:
        self._call("PATCH", f"/test/users/{sub}", fields)

    def remove(self, sub: str) -> None:
        self._call("DELETE", f"/test/users/{sub}")

    def fault_next_id_token(self, fault: str) -> None:
        """wrong_audience, wrong_issuer, expired, wrong_nonce, no_nonce, stranger_key, stale_auth_time, tampered."""
        self._call("POST", "/test/next-id-token", {"fault": fault})

    def clock_to(self, instant) -> None:
        """Move the provider's clock to `instant` (a datetime), with the test's own (time_machine)."""
        self._call("POST", "/test/clock", {"now_ms": int(instant.timestamp() * 1000)})

    def token_requests(self) -> list[dict]:
        return self._call("GET", "/test/token-requests")

    # -- a person signing in, with Django's test client on our side ----------

    def _absolute(self, location: str) -> str:
        return location if location.startswith("http") else self.issuer + location

    def sign_in(self, client, sub: str, *, start: str = "/sso/login/?next=/admin/", provider_session=None):
        """Our start URL, the provider's sign-in page as `sub`, and our callback: the callback's response.

        `provider_session` (a requests.Session) carries the provider's own
        cookies from one sign-in to the next, as a browser would.
        """
        browser = provider_session or requests.Session()
        response = client.get(start)
        assert response.status_code == 302, response.content[:500]
        location = response["Location"]
        assert location.startswith(self.issuer), location
        for _ in range(6):
            answer = browser.get(location, allow_redirects=False, timeout=5)
            if answer.status_code == 200 and 'name="login"' in answer.text:
                answer = browser.post(
                    location.split("?")[0] + "/login", data={"login": sub}, allow_redirects=False, timeout=5
                )
            assert answer.status_code in (302, 303), answer.text[:500]
            location = self._absolute(answer.headers["Location"])
            if location.startswith("http://testserver/"):
                parts = urlsplit(location)
                return client.get(f"{parts.path}?{parts.query}")
        raise AssertionError(f"the provider never sent the browser back: {location}")
