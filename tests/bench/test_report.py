"""bench/report.py keeps one current table: a run rewrites the rows it measured, keeps the others.

Pure: a small sample of a run's raw figures (the shape bench/measure.py writes),
no database and no benchmark.
"""

from __future__ import annotations

import datetime as dt

from bench.report import CURRENT_END, CURRENT_START, MARKER, current_table_update, write_results

MACHINE = {
    "cpu": "Test CPU",
    "nproc": 2,
    "memory_gib": 4.0,
    "python": "3.11.7",
    "postgresql": "15",
    "wrk": "wrk 4.1.0",
    "load_average": (0.42, 0.5, 0.5),
}
STARTED = dt.datetime(2027, 1, 2, 3, 4, tzinfo=dt.UTC)
OLD_DATE = "2026-11-29 06:01 UTC, load 1.29"
ROTATION_ROW = "| Key rotation | 10,000 | 10,549 rows/s | 15,843 rows/s | 0.67× | ≥ 0.50× | met | " + OLD_DATE + " |"
OLDER_RUN = "## 2026-11-29 06:01 UTC: N = 10,000 (an older run that must stay below the new one)\n"
NOTES = "## What the table does not say (by hand)\n\nA note that a run must keep.\n"


def _results() -> str:
    """A current table as RESULTS.md holds it: two reminder rows and a rotation row, all from an older run."""
    return (
        "# Benchmark results\n\nIntro.\n\n"
        + CURRENT_START
        + "| Figure | N | Value | Floor | Ratio | Target | Met? | Measured on |\n"
        + "|---|---:|---:|---:|---:|---|---|---|\n"
        + "| Reminder run, wall | 10,000 | 2.17 s | 6.8 ms SQL + 0.34 s sending | 5.77× | ≤ 2 × (5× SQL + sending) | "
        + f"**not met** | {OLD_DATE} |\n"
        + f"| Reminder scan (dry run) | 10,000 | 46.5 ms | 6.8 ms | 6.84× | ≤ 5× | **not met** | {OLD_DATE} |\n"
        + ROTATION_ROW
        + "\n"
        + CURRENT_END
        + "\n"
        + NOTES
    )


def _reminders(*, ratio: float, scan_ratio: float) -> dict:
    return {
        "wall_s": 1.5,
        "floor_sql_s": 0.008,
        "send_floor_s": 0.35,
        "ratio_to_target": ratio,
        "dry_run_s": 0.0123,
        "floor_rows": 91,
        "scan_ratio": scan_ratio,
        "queries": 580,
        "queries_per_sent": 6.37,
        "peak_memory_mb": 7.1,
    }


def _rows(text: str) -> list[list[str]]:
    table = text.split(CURRENT_START, 1)[1].split(CURRENT_END, 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    return rows[2:]  # past the header and its rule


def _row(text: str, figure: str, n: str) -> list[str]:
    [row] = [row for row in _rows(text) if row[:2] == [figure, n]]
    return row


def test_a_run_replaces_the_rows_it_measured_and_keeps_the_others_with_their_date(tmp_path):
    results, history = tmp_path / "RESULTS.md", tmp_path / "HISTORY.md"
    results.write_text(_results())
    history.write_text(f"# Benchmark history\n\n{MARKER}\n{OLDER_RUN}\nolder figures\n")
    sizes = [{"institutions": 10_000, "reminders": _reminders(ratio=1.5, scan_ratio=6.2), "errors": {}}]

    write_results(results, started=STARTED, machine=MACHINE, sizes=sizes, quick=False)

    text = results.read_text()
    new_date = "2027-01-02 03:04 UTC, load 0.42"
    assert _row(text, "Reminder run, wall", "10,000") == [
        "Reminder run, wall",
        "10,000",
        "1.50 s",
        "8.0 ms SQL + 0.35 s sending",
        "1.50×",
        "≤ 2 × (5× SQL + sending)",
        "met",
        new_date,
    ]
    # A figure whose newest measurement misses its target says so.
    assert _row(text, "Reminder scan (dry run)", "10,000")[2:] == [
        "12.3 ms",
        "8.0 ms",
        "6.20×",
        "≤ 5×",
        "**not met**",
        new_date,
    ]
    assert _row(text, "Reminder run, statements per reminder sent", "10,000")[2] == "6.37 (580 in a run in one process)"
    # Not measured by this run: kept as it was, with its older date.
    assert ROTATION_ROW in text.splitlines()
    assert [row[0] for row in _rows(text)] == [
        "Reminder run, wall",
        "Reminder scan (dry run)",
        "Reminder run, statements per reminder sent",
        "Reminder run, peak memory",
        "Key rotation",
    ]
    assert text.endswith(CURRENT_END + "\n" + NOTES)
    assert text.startswith("# Benchmark results\n\nIntro.\n\n")
    # The full log goes on top of the history, not into the results.
    assert "#### Summary" not in text
    log = history.read_text()
    assert log.index("## 2027-01-02 03:04 UTC: N = 10,000") < log.index(OLDER_RUN) < log.index("older figures")
    assert log.count(MARKER) == 1


def test_a_new_size_goes_beside_its_figure_and_the_smaller_size_stays():
    measured = [["Reminder run, wall", "100,000", "9 s", "f", "2.50×", "≤ 2 × (5× SQL + sending)", "**not met**", "d"]]

    text = current_table_update(_results(), measured)

    assert [row[:2] for row in _rows(text)] == [
        ["Reminder run, wall", "10,000"],
        ["Reminder run, wall", "100,000"],
        ["Reminder scan (dry run)", "10,000"],
        ["Key rotation", "10,000"],
    ]
    assert _row(text, "Reminder run, wall", "10,000")[-1] == OLD_DATE


def test_the_first_run_writes_the_table_and_the_history(tmp_path):
    results = tmp_path / "RESULTS.md"
    sizes = [{"institutions": 200, "reminders": _reminders(ratio=0.9, scan_ratio=1.0), "errors": {}}]

    write_results(results, started=STARTED, machine=MACHINE, sizes=sizes, quick=True)

    text = results.read_text()
    assert "[HISTORY.md](HISTORY.md)" in text
    assert _row(text, "Reminder run, wall", "200")[-2:] == ["met", "2027-01-02 03:04 UTC, load 0.42, quick"]
    assert "## 2027-01-02 03:04 UTC: N = 200 (quick)" in (tmp_path / "HISTORY.md").read_text()
