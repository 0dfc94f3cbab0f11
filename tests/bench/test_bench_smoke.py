"""The bench still works: a quick run at N=200 writes every figure with numbers.

Benchmarks are not tests (no timing is asserted here); this only proves the
harness runs end to end: throwaway PostgreSQL database, data, gunicorn with
wrk, a Celery worker on Redis, the SMTP sink, and the report. It takes
about 25 s, so locally it runs only when asked (RUN_BENCH_SMOKE=1); CI (CI
set) always runs it, and fails it when PostgreSQL, Redis or wrk is missing,
since .ci/run provides all three.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import CURRENT_END, CURRENT_START, MARKER, SECTIONS, current_table_update

ROOT = Path(__file__).resolve().parents[2]
OLDER_RUN = "## 2001-01-01 00:00 UTC: N = 1 (an older run that must stay below the new one)\n"
# A row of the current table that the run does not measure (N = 1): it must stay.
KEPT_ROW = ["Key rotation", "1", "1 rows/s", "1 rows/s", "1.00×", "≥ 0.50×", "met", "2001-01-01 00:00 UTC, load 0.00"]


def _missing() -> str | None:
    import psycopg
    import redis

    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3).close()
    except psycopg.Error:
        return "PostgreSQL is not reachable on 127.0.0.1:5432"
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.RedisError:
        return "Redis is not reachable on 127.0.0.1:6379"
    if not shutil.which("wrk"):
        return "wrk is not installed (apt-get install wrk)"
    return None


@pytest.fixture
def bench_prerequisites() -> None:
    if not (os.environ.get("CI") or os.environ.get("RUN_BENCH_SMOKE")):
        pytest.skip("the bench smoke test is opt-in locally (RUN_BENCH_SMOKE=1); CI always runs it")
    missing = _missing()
    if missing and os.environ.get("CI"):
        pytest.fail(f"The bench smoke test must run in CI: {missing}.")
    if missing:
        pytest.skip(missing)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    ends = [text.find(marker, start + 1) for marker in ("\n#### ", "\n### ", "\n## ")]
    ends = [end for end in ends if end != -1]
    return text[start : min(ends) if ends else len(text)]


def _table_rows(section: str) -> list[list[str]]:
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # past the header row


def test_the_bench_at_200_institutions_reports_every_figure_with_numbers(bench_prerequisites, tmp_path):
    results, history = tmp_path / "RESULTS.md", tmp_path / "HISTORY.md"
    results.write_text(current_table_update("", [KEPT_ROW]))
    history.write_text(f"# Benchmark history\n\n{MARKER}\n{OLDER_RUN}\nolder figures\n")

    run = subprocess.run(
        [sys.executable, "bench/run.py", "--institutions", "200", "--quick", "--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert run.returncode == 0, run.stderr[-4000:]
    text = history.read_text()
    newest = text[text.index(MARKER) : text.index(OLDER_RUN)]
    assert "N = 200 (quick)" in newest
    assert "Errors" not in newest
    assert "Machine:" in newest and "cores (nproc)" in newest
    for heading in SECTIONS:
        rows = _table_rows(_section(newest, heading))
        assert len(rows) >= 6, heading
        for label, value in rows:
            assert re.search(r"\d", value), f"{heading}: {label!r} has no number ({value!r})"
    summary = _table_rows(_section(newest, "#### Summary"))
    assert {row[0] for row in summary} >= {
        "Reminder run, wall",
        "Admin list, default",
        "Submission throughput",
        "Key rotation",
        "API trivial authenticated view (gunicorn)",
        "API key reads (gunicorn)",
        "API key list, page of 100",
    }
    # Every figure stands next to its floor and a ratio.
    for row in summary:
        assert re.search(r"\d", row[3]) and re.search(r"\d", row[4]), row
    # Submissions are accepted, not refused: each request hands in a key of its own.
    [submitted] = [row for row in summary if row[0] == "Submission throughput"]
    assert float(submitted[2].split()[0].replace(",", "")) > 0, submitted
    assert text.index(OLDER_RUN) > text.index("N = 200 (quick)"), "the older run must stay below the new one"
    # The current table: this run's rows at N = 200, dated, and the row it did not measure kept.
    current = _table_rows(results.read_text().split(CURRENT_START, 1)[1].split(CURRENT_END, 1)[0])
    assert KEPT_ROW in current
    mine = {row[0]: row for row in current if row[1] == "200"}
    assert set(mine) >= {row[0] for row in summary}
    assert all(row[-1].endswith(", quick") for row in mine.values()), mine
