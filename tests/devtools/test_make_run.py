"""`make run` stops cleanly: Ctrl-C stops web, worker, beat and the fake gateway, each with exit 0.

Runs honcho with Procfile.dev as the Makefile does, on free ports, against a
temporary VAR_DIR and SQLite database, then sends SIGINT as a terminal's
Ctrl-C does. Needs nothing but the virtualenv, so it runs everywhere; under
CI a missing honcho fails instead of skipping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROCESSES = ("web", "worker", "beat", "cd2")
# Start-up on a busy 2-core machine, not a performance assertion.
READY_DEADLINE = 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback URL built here)
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


def _descendants(pid: int) -> dict[int, str]:
    """{pid: start time} of every process below `pid`, read from /proc (no psutil here)."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
        starts[int(entry.name)] = fields[19]
    found, pending = {}, [pid]
    while pending:
        for child in parents.get(pending.pop(), []):
            found[child] = starts[child]
            pending.append(child)
    return found


def _still_running(pid: int, start: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"


@pytest.fixture
def honcho():
    path = BIN / "honcho"
    if not path.exists():
        message = "honcho is not installed in the virtualenv (requirements-dev.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_ctrl_c_on_make_run_stops_every_process_cleanly(honcho, tmp_path):
    web_port, cd2_port = _free_port(), _free_port()
    settings = {
        "DEBUG": "true",
        "VAR_DIR": str(tmp_path),
        # Explicit, so a CI environment's PostgreSQL and Redis are not used.
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "CACHE_URL": f"filecache://{tmp_path / 'cache'}",
        "WEB_PORT": str(web_port),
        "CD2_PORT": str(cd2_port),
        "CD2_API_URL": f"http://127.0.0.1:{cd2_port}",
    }
    env_file = tmp_path / "honcho.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
    env = {**os.environ, **settings, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in (["migrate", "--noinput"], ["load_demo_data"]):  # what make run does first
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)

    process = subprocess.Popen(
        [str(honcho), "-f", "Procfile.dev", "-e", str(env_file), "start"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as `make run` has in a terminal
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
            and any("beat: Starting" in line for line in lines)
        ):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "not ready in time:\n" + "".join(lines)
            time.sleep(0.2)
        children = _descendants(process.pid)
        assert len(children) >= len(PROCESSES)

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(timeout=5)
    output = "".join(lines)

    # honcho always exits 130 after SIGINT (its code for "stopped by Ctrl-C"),
    # whatever its processes did: their own exit codes are the verdict.
    assert returncode == 130, output
    for name in PROCESSES:
        assert f"{name}.1 stopped (rc=0)" in output, output
    assert "SIGKILL" not in output, output  # every process stopped within honcho's 5 s grace
    assert "ERROR" not in output and "Traceback" not in output, output
    left = [pid for pid, start in children.items() if _still_running(pid, start)]
    assert left == [], output
