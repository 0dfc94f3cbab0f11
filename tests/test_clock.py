"""tests/clock/sitecustomize.py moves the wall clock of every Python process started with it, and nothing else."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import time_machine

CLOCK_DIR = Path(__file__).resolve().parent / "clock"

# What a child reports: its wall clock, its monotonic clock, and how long a
# timed wait and a sleep took on the monotonic clock (timeouts must stay real).
PROBE = """
import datetime, json, threading, time
start = time.monotonic()
threading.Event().wait(0.2)
time.sleep(0.1)
print(json.dumps({
    "now": datetime.datetime.now(datetime.UTC).isoformat(),
    "time": time.time(),
    "monotonic": start,
    "waited": time.monotonic() - start,
}))
"""


def probe(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("CLOCK_AT", "CLOCK_AT_SINCE", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, "PYTHONPATH": str(CLOCK_DIR), **env},
        cwd=tmp_path,  # not the project folder: the clock folder must be found by its absolute path
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)


def real_time() -> float:
    """The machine's clock, even when this test process runs with a moved clock itself."""
    hatch = time_machine.escape_hatch
    return hatch.time.time() if hatch.is_travelling() else time.time()


def test_a_child_reads_the_moved_clock_and_keeps_real_timeouts(tmp_path):
    before = time.monotonic()
    child = probe(tmp_path, CLOCK_AT="2031-05-05T05:05:00Z", CLOCK_AT_SINCE=repr(real_time()))
    after = time.monotonic()
    now = dt.datetime.fromisoformat(child["now"])
    assert dt.datetime(2031, 5, 5, 5, 5, tzinfo=dt.UTC) <= now < dt.datetime(2031, 5, 5, 5, 5, 30, tzinfo=dt.UTC)
    assert abs(child["time"] - now.timestamp()) < 5
    # The monotonic clock is the machine's (one clock for all processes on Linux), and waits last what they say.
    assert before <= child["monotonic"] <= after
    assert 0.3 <= child["waited"] < 5


def test_children_started_later_agree_on_the_moment(tmp_path):
    an_hour_ago = real_time() - 3600
    child = probe(tmp_path, CLOCK_AT="2028-02-29T12:00:00Z", CLOCK_AT_SINCE=repr(an_hour_ago))
    now = dt.datetime.fromisoformat(child["now"])
    assert dt.datetime(2028, 2, 29, 13, 0, tzinfo=dt.UTC) <= now < dt.datetime(2028, 2, 29, 13, 0, 30, tzinfo=dt.UTC)


def test_without_clock_at_the_clock_is_left_alone(tmp_path):
    child = probe(tmp_path)
    assert abs(child["time"] - real_time()) < 30
    assert 0.3 <= child["waited"] < 5
