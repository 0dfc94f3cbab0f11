#!/usr/bin/env python3
"""Reference client: fetch an institution's CD2 key from the registry, run `dap` with it, report back.

    export CD2_REGISTRY_URL=https://registry.example.org CD2_REGISTRY_TOKEN=cd2r_...
    python cd2_pull.py northfield                                # dap list --namespace canvas
    python cd2_pull.py northfield -- snapshot --namespace canvas --table accounts --format jsonl
    python cd2_pull.py northfield --every 3600                   # poll; refetch the key only when it changed

The token needs keys:read and syncs:write (and keys:list for --every). The
key goes to `dap` only through DAP_CLIENT_ID/DAP_CLIENT_SECRET in its
environment; this script never prints or writes it. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess  # nosec B404
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_DAP_ARGS = ["list", "--namespace", "canvas"]


class Registry:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(  # noqa: S310 (the registry's own https URL)
            f"{self.url}/api/v1/{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310  # nosec B310
                return json.load(response)
        except urllib.error.HTTPError as exc:  # an RFC 9457 problem: say its code and detail
            problem = json.loads(exc.read() or b"{}")
            sys.exit(f"registry: {exc.code} {problem.get('code', '')}: {problem.get('detail', exc.reason)}")

    def changed(self, slug: str, since: str) -> bool:
        query = urllib.parse.urlencode({"changed_since": since})
        page = self.call("GET", f"keys/?{query}")
        while True:
            if any(row["slug"] == slug for row in page["results"]):
                return True
            if not page["next"]:
                return False
            page = self.call("GET", page["next"].split("/api/v1/", 1)[1])


def outcome_of(returncode: int, stderr: str) -> str:
    """The sync outcome the registry understands, from dap's exit code and log."""
    if returncode == 0:
        return "ok"
    if "Invalid client credentials" in stderr or "AuthenticationError" in stderr:
        return "auth_failed"
    if any(word in stderr for word in ("AccountDisabled", "AccountNotOnboarded", "RequestTypeForbidden")):
        return "forbidden"
    return "error"


def run_once(registry: Registry, slug: str, key: dict, dap: list[str]) -> int:
    env = {**os.environ, "DAP_CLIENT_ID": key["client_id"], "DAP_CLIENT_SECRET": key["client_secret"]}
    env.pop("CD2_REGISTRY_TOKEN", None)  # dap does not need the registry token
    done = subprocess.run(dap, env=env, stderr=subprocess.PIPE, text=True, check=False)  # noqa: S603  # nosec B603
    sys.stderr.write(done.stderr)
    outcome = outcome_of(done.returncode, done.stderr)
    # dap's last log line says what failed; it never holds the key.
    detail = "" if outcome == "ok" else (done.stderr.strip().splitlines() or [""])[-1][:500]
    registry.call("POST", f"institutions/{slug}/syncs", {"key_id": key["key_id"], "outcome": outcome, "detail": detail})
    print(f"cd2_pull: {slug}: {outcome}", file=sys.stderr)
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug")
    parser.add_argument("--every", type=int, help="Repeat every N seconds (needs keys:list).")
    parser.add_argument("--dap", default="dap", help="The dap command (default: dap on PATH).")
    parser.add_argument("dap_args", nargs="*", help="Arguments for dap after --.")
    args = parser.parse_args(argv)
    registry = Registry(os.environ["CD2_REGISTRY_URL"], os.environ["CD2_REGISTRY_TOKEN"])
    dap = [args.dap, "--no-tracking", "--non-interactive", *(args.dap_args or DEFAULT_DAP_ARGS)]
    key, since = None, None
    while True:
        now = dt.datetime.now(dt.UTC).isoformat()
        if key is None or registry.changed(args.slug, since):
            key = registry.call("GET", f"institutions/{args.slug}/key")
        since = now
        returncode = run_once(registry, args.slug, key, dap)
        if not args.every:
            return returncode
        time.sleep(args.every)


if __name__ == "__main__":
    sys.exit(main())
