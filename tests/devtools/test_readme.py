"""README's shell examples run as written on a fresh demo, on ports other than the defaults.

Starts `make run` itself (the Makefile's recipe: migrate, load_demo_data and
honcho with web, worker, beat and the fake gateway) with WEB_PORT and
CD2_PORT on free ports, a temporary VAR_DIR and SQLite database, and no
SITE_URL or CD2_API_URL: the ports alone must move everything. Then runs
every ```sh block of README.md in bash (-e, -u, -o pipefail) from the
repository's root, in README's order, except a block under a
`<!-- readme-test: skip: why -->` line. Afterwards: the links printed and the
banner name WEB_PORT, the API answered on it, the README's rejected demo key
belongs to no institution and the gateway refuses it, and the key `demo_key`
printed is one the running gateway accepts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from credentials.cd2 import Verdict, check_key
from devtools.fake_gateway import DEMO_REJECTED_CLIENT_ID, DEMO_REJECTED_SECRET
from tests.devtools.test_make_run import _answers, _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("readme_demo")]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
README = ROOT / "README.md"
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip:\s*(?P<why>[^>]+?)\s*-->\s*$")
# Start-up on a busy 2-core machine (migrations on a fresh SQLite, the demo, four processes).
READY_DEADLINE = 120
BLOCK_TIMEOUT = 180


def readme_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, code, why skipped or "") of every ```sh block, in order."""
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```sh":
            start = index
            previous = lines[index - 1] if index else ""
            skipped = SKIP_MARK.match(previous.strip())
            index += 1
            body = []
            while lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            blocks.append((start + 1, "\n".join(body), skipped.group("why") if skipped else ""))
        index += 1
    return blocks


def test_the_readme_marks_only_blocks_that_cannot_run_on_the_demo():
    blocks = readme_blocks(README.read_text())
    skipped = [code for _, code, why in blocks if why]
    assert len(blocks) - len(skipped) >= 5, "README's examples are the ones this test runs"
    assert all("make run" in code or "make test" in code or "example.org" in code for code in skipped), skipped
    # A placeholder would not run as written.
    for line, code, why in blocks:
        if not why:
            assert not re.search(r"\bSLUG\b|\bUSERNAME\b|\[--", code), f"README line {line}: a placeholder"


@pytest.fixture
def demo(tmp_path):
    """`make run` on free ports; yields (environment for the blocks, the output so far)."""
    web_port, cd2_port = _free_port(), _free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DJANGO_SETTINGS_MODULE", "SITE_URL", "CD2_API_URL", "MAKEFLAGS", "MAKELEVEL")
    }
    env.update(
        {
            "DEBUG": "true",
            "VAR_DIR": str(tmp_path),
            # Explicit, so a CI environment's PostgreSQL and Redis are not used.
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
            "CELERY_BROKER_URL": "filesystem://",
            "CACHE_URL": f"filecache://{tmp_path / 'cache'}",
            "WEB_PORT": str(web_port),
            "CD2_PORT": str(cd2_port),
            "PATH": f"{BIN}{os.pathsep}{env_path()}",
        }
    )
    # -o: the virtualenv is the one running this test; make must not reinstall it.
    process = subprocess.Popen(
        ["make", "-o", ".venv/.installed", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + READY_DEADLINE
        while not (
            _answers(f"http://127.0.0.1:{web_port}/admin/login/")
            and _answers(f"http://127.0.0.1:{cd2_port}/")
            and any("ready." in line for line in lines)
        ):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "make run not ready in time:\n" + "".join(lines)
            time.sleep(0.5)
        yield env, lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(timeout=5)


def env_path() -> str:
    return os.environ.get("PATH", "/usr/bin:/bin")


def run_block(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
    )


def manage(env: dict[str, str], *arguments: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *arguments], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_readme_example_runs_as_written_on_a_fresh_demo_on_other_ports(demo):
    env, make_output = demo
    web = f"http://127.0.0.1:{env['WEB_PORT']}"
    outputs = []
    for line, code, why in readme_blocks(README.read_text()):
        if why:
            continue
        done = run_block(code, env)
        assert done.returncode == 0, f"README block at line {line} failed ({done.returncode}):\n{code}\n{done.stderr}"
        outputs.append(done.stdout + done.stderr)
    everything = "\n".join(outputs)

    # The ports moved everything: the banner, the links the commands print, the API answered there.
    assert f"Admin: {web}/admin/" in "".join(make_output)
    links = re.findall(r"https?://[^\s\"']+/k/[^\s\"']+", everything)
    assert links and all(link.startswith(web + "/") for link in links), links
    assert ":8000/" not in everything
    assert '"client_id"' in everything or "client_id" in everything  # the API's answer to curl

    # The README's rejected key: nobody's, and the gateway refuses it; demo_key's key: the gateway accepts it.
    gateway = f"http://127.0.0.1:{env['CD2_PORT']}"
    holders = manage(
        env,
        "shell",
        "-c",
        "from credentials.models import CD2Credential;"
        "from credentials.fields import client_id_index;"
        f"print(CD2Credential.objects.filter(client_id_index=client_id_index({DEMO_REJECTED_CLIENT_ID!r})).count())",
    )
    assert holders.strip().splitlines()[-1] == "0"
    assert check_key(client_id=DEMO_REJECTED_CLIENT_ID, secret=DEMO_REJECTED_SECRET, base_url=gateway).verdict in (
        Verdict.REJECTED,
    )
    printed = re.search(r"Client ID: (\S+)\nSecret:\s+(\S+)", everything)
    assert printed, everything
    deadline = time.monotonic() + 10  # the gateway reads its keys file again within a second
    while True:
        verdict = check_key(client_id=printed[1], secret=printed[2], base_url=gateway).verdict
        if verdict is Verdict.OK or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert verdict is Verdict.OK
