"""bench/RESULTS.md holds one current table; bench/HISTORY.md each run's full log.

A run rewrites the table's rows it measured (figure and N) and keeps the
others with the date of the run that measured them, so the table says where
every figure stands today; the run's full log goes on top of the history.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

RESULTS_HEADER = """# Benchmark results

Where each figure stands today: the newest measurement of every figure at each
size, next to its floor (measured in the same run, on the same data) and its
target. `make bench` (`python bench/run.py`) rewrites the rows it measured and
keeps the others, with the date of the run that measured them. Each run's full
log (machine, setup, every table, findings) is in [HISTORY.md](HISTORY.md),
newest first. The machine is small and shared, and its speed drifts: compare
ratios, not raw times, and mind the load average. See bench/measure.py for what
each figure and floor is exactly.

"""
CURRENT_START = "<!-- current figures: bench/report.py rewrites the rows of this table -->\n"
CURRENT_END = "<!-- end of current figures -->\n"
CURRENT_COLUMNS = ("Figure", "N", "Value", "Floor", "Ratio", "Target", "Met?", "Measured on")

HISTORY_HEADER = """# Benchmark history

Written by `python bench/run.py` (`make bench`); newest run first. Where each
figure stands today is in [RESULTS.md](RESULTS.md). Each figure is measured
next to its floor in the same run on the same data, because the machine is
small and shared: compare ratios, not raw times, across runs.
See bench/measure.py for what each figure and floor is exactly.

"""
MARKER = "<!-- bench runs below, newest first -->\n"

SECTIONS = (
    "### 1. Reminder run",
    "### 2. Admin institution list",
    "### 3. Submission",
    "### 4. Key rotation",
    "### 5. Key checks",
    "### 6. Pipeline API",
)
# The figure (bench/measure.py's MEASURES key) each section shows; a run that
# measured none of it (--only) leaves the section out.
SECTION_FIGURES = dict(
    zip(SECTIONS, ("reminders", "admin", "submission", "rotation", "key_checks", "api"), strict=True)
)


def _n(value, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and digits:
        text = f"{value:,.{digits}f}"
    else:
        text = f"{round(value):,}"
    return f"{text}{unit}"


def _ms(seconds) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1000
    return f"{ms:,.1f} ms" if ms < 100 else f"{ms:,.0f} ms"


def _s(seconds) -> str:
    return "—" if seconds is None else f"{seconds:,.2f} s"


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _met(ok) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _slowest(view: dict) -> str:
    """'157 ms list, 67 ms filter' from the captured queries: time and what the query reads."""
    parts = []
    for query in view["slowest_queries"]:
        sql = query["sql"]
        # The table of the first selected column, else the first one read.
        table = re.match(r'SELECT (?:DISTINCT )?"(\w+)"\.', sql) or re.search(r'\bFROM "?(\w+)', sql)
        what = "count" if sql.startswith("SELECT COUNT") else table.group(1) if table else "query"
        parts.append(f"{query['ms']:.0f} ms {what}")
    return ", ".join(parts)


def _table(sizes: list[dict], section: str | None, rows: list[tuple[str, callable]]) -> list[str]:
    head = "| | " + " | ".join(f"N = {size['institutions']:,}" for size in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    for label, get in rows:
        cells = []
        for size in sizes:
            try:
                cells.append(get(size[section] if section else size))
            except (KeyError, TypeError, ZeroDivisionError, IndexError, ValueError):
                cells.append("—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


# The admin list's views, as bench/measure.py names them (older runs measured only the first two).
ADMIN_LABELS = {
    "default": "default",
    "expiring_30": "expiring ≤ 30 d",
    "expired": "expired",
    "this_month": "expiring this month",
    "expiry_ok": "expiry OK",
    "no_key": "no active key",
    "failing": "failing check",
    "pending": "pending check",
    "never_checked": "never checked",
    "missing": "no working key",
    "reminded": "reminded, no answer",
    "mine": "my institutions",
    "served": "served",
    "status": "status active",
    "region": "region eu-west-1",
    "owner": "one account owner",
}


# The current table's order: each figure with its sizes together, in this order
# (a figure not listed here goes last).
FIGURE_ORDER = (
    "Reminder run, wall",
    "Reminder scan (dry run)",
    "Reminder scan, hourly run (dry run, costliest hour)",
    "Reminder run, statements per reminder sent",
    "Reminder run, peak memory",
    *(f"Admin list, {label}" for label in ADMIN_LABELS.values()),
    "Submission throughput",
    "Submission throughput, 100,000 beside 10,000",
    "Key rotation",
    "Key checks, gateway requests/s the design needs",
    "API trivial authenticated view (gunicorn)",
    "API key reads (gunicorn)",
    "API key list, page of 100",
    "API key list, page of 500",
    "Metrics scrape (/metrics)",
)


def _admin_views(admin: dict) -> list[tuple[str, str]]:
    """(key, "Admin list, label") for each view the run measured."""
    return [(key, f"Admin list, {label}") for key, label in ADMIN_LABELS.items() if key in admin]


# One row of a summary: figure, measured, floor, ratio, target, met (None: no verdict).
Figure = tuple[str, str, str, str, str, bool | None]


def _figures(size: dict) -> list[Figure]:
    """The figures one size measured, each beside its floor and target (the run's summary)."""
    rows: list[Figure] = []
    r = size.get("reminders")
    if r:
        rows.append(
            (
                "Reminder run, wall",
                _s(r["wall_s"]),
                f"{_ms(r['floor_sql_s'])} SQL + {_s(r['send_floor_s'])} sending",
                _x(r["ratio_to_target"]),
                "≤ 2 × (5× SQL + sending)",
                r["ratio_to_target"] <= 2 if r["ratio_to_target"] is not None else None,
            )
        )
        rows.append(
            (
                "Reminder scan (dry run)",
                _ms(r["dry_run_s"]),
                _ms(r["floor_sql_s"]),
                _x(r["scan_ratio"]),
                "≤ 5×",
                r["scan_ratio"] <= 5 if r["scan_ratio"] else None,
            )
        )
    if r and r.get("hourly_s") is not None:
        rows.append(
            (
                "Reminder scan, hourly run (dry run, costliest hour)",
                f"{_ms(r['hourly_s'])}, {r['hourly_queries']} statements, {r['hourly_due']:,} due",
                _ms(r["floor_sql_s"]),
                _x(r["hourly_ratio"]),
                "≤ 5×",
                r["hourly_ratio"] <= 5 if r["hourly_ratio"] else None,
            )
        )
    a = size.get("admin")
    if a:
        for key, label in _admin_views(a):
            ratio_key = f"ratio_{key}"
            rows.append(
                (
                    label,
                    f"{_ms(a[key]['median_s'])}, {a[key]['queries']} queries",
                    f"{_ms(a['floor']['median_s'])}, {a['floor']['queries']} queries",
                    _x(a[ratio_key]),
                    "≤ 1.5×",
                    a[ratio_key] <= 1.5 if a[ratio_key] else None,
                )
            )
    s = size.get("submission")
    if s:
        rows.append(
            (
                "Submission throughput",
                f"{_n(s['submission']['rps'], 1)} req/s",
                f"{_n(s['floor']['rps'], 1)} req/s (fair floor: 2 gateway calls, 1 encryption, 1 INSERT)",
                _x(s["throughput_ratio"]),
                "≥ 0.50×",
                s["throughput_ratio"] >= 0.5 if s["throughput_ratio"] else None,
            )
        )
    k = size.get("rotation")
    if k:
        rows.append(
            (
                "Key rotation",
                f"{_n(k['command_rows_per_s'])} rows/s",
                f"{_n(k['floor_rows_per_s'])} rows/s",
                _x(k["speed_ratio"]),
                "≥ 0.50×",
                k["speed_ratio"] >= 0.5 if k["speed_ratio"] else None,
            )
        )
    p = size.get("api")
    if p:
        if p.get("plain_load"):
            rows.append(
                (
                    "API trivial authenticated view (gunicorn)",
                    f"{_n(p['floor_load']['rps'], 1)} req/s",
                    f"{_n(p['plain_load']['rps'], 1)} req/s (plain unauthenticated view)",
                    _x(p["auth_ratio"]),
                    "≥ 0.33×",
                    p["auth_ratio"] >= 0.33 if p["auth_ratio"] else None,
                )
            )
        rows.append(
            (
                "API key reads (gunicorn)",
                f"{_n(p['read_load']['rps'], 1)} req/s",
                f"{_n(p['floor_load']['rps'], 1)} req/s (trivial authenticated view)",
                _x(p["read_ratio"]),
                "≥ 0.50×",
                p["read_ratio"] >= 0.5 if p["read_ratio"] else None,
            )
        )
        for key, label in (("list", "100"), ("list_500", "500")):
            floor = p["floor" if key == "list" else "floor_500"]
            rows.append(
                (
                    f"API key list, page of {label}",
                    f"{_ms(p[key]['median_s'])}, {p[key]['queries']} queries",
                    f"{_ms(floor['median_s'])}, {floor['queries']} queries (stock DRF list)",
                    _x(p["ratio_" + key]),
                    "≤ 1.5×",
                    p["ratio_" + key] <= 1.5 if p["ratio_" + key] else None,
                )
            )
    m = size.get("metrics")
    if m:
        rows.append(
            (
                "Metrics scrape (/metrics)",
                f"{_ms(m['median_s'])}, {m['queries']} queries",
                f"{_ms(m['floor_s'])}, {m['floor_queries']} query (COUNT of served institutions)",
                _x(m["ratio"]),
                "≤ 100 ms, queries fixed",
                m["median_s"] <= 0.1,
            )
        )
    c = size.get("key_checks")
    if c:
        need, limit = c["required_gateway_rps"], c["gateway_rate_limit"]
        rows.append(
            (
                "Key checks, gateway requests/s the design needs",
                f"{_n(need, 1)} req/s",
                f"limit {_n(limit, 1)} req/s",
                _x(need / limit if limit else None),
                "≤ 1×",
                need <= limit if limit else None,
            )
        )
    return rows


def _summary(sizes: list[dict]) -> list[str]:
    lines = [
        "| Figure | N | Measured | Floor | Ratio | Target | Met |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for size in sizes:
        n = f"{size['institutions']:,}"
        for label, measured, floor, ratio, target, met in _figures(size):
            lines.append(f"| {label} | {n} | {measured} | {floor} | {ratio} | {target} | {_met(met)} |")
    for n, (label, measured, floor, ratio, target, met) in _across_sizes(sizes):
        lines.append(f"| {label} | {n:,} | {measured} | {floor} | {ratio} | {target} | {_met(met)} |")
    return lines


def render(*, started: dt.datetime, machine: dict, sizes: list[dict], quick: bool) -> str:
    ns = " and ".join(f"{size['institutions']:,}" for size in sizes)
    out = [
        f"## {started:%Y-%m-%d %H:%M} UTC: N = {ns}{' (quick)' if quick else ''}",
        "",
        f"Machine: {machine['cpu']}, {machine['nproc']} cores (nproc), {machine['memory_gib']:.1f} GiB memory; "
        f"Python {machine['python']}, PostgreSQL {machine['postgresql']}, {machine['wrk']}. "
        f"Load average at start {machine['load_average'][0]:.2f} (the machine is shared).",
        "",
    ]
    errors = {
        f"{size['institutions']:,}: {name}": text for size in sizes for name, text in size.get("errors", {}).items()
    }
    if errors:
        out += ["**Errors:**", ""] + [f"- N = {where}: `{text}`" for where, text in errors.items()] + [""]
    out += ["#### Summary", "", *_summary(sizes), ""]

    out += ["#### Setup (not measured)", ""]
    out += _table(
        sizes,
        None,
        [
            ("migrate", lambda s: _s(s["setup"]["migrate_s"])),
            ("generate (COPY)", lambda s: _s(s["setup"]["generate_s"])),
            ("institutions / contacts", lambda s: f"{s['setup']['institutions']:,} / {s['setup']['contacts']:,}"),
            ("keys (active)", lambda s: f"{s['setup']['credentials']:,} ({s['setup']['active_keys']:,})"),
            ("reminder log rows (steady state)", lambda s: _n(s["setup"]["reminder_logs"])),
            ("whole size, end to end", lambda s: _s(s.get("total_s"))),
        ],
    )
    out += [
        "",
        SECTIONS[0] + " (about 1% due; mail to a local aiosmtpd sink)",
        "",
        "Floor: the bare SQL that selects the due keys with the institution, owner and contact addresses "
        "(median of repeats). Sending floor: as many bare messages of the same size handed to the same sink over "
        "one SMTP connection. Target (issue 11): wall ≤ 2 × (5 × SQL floor + sending floor). Each round runs "
        "from the same state and measures its sending floor right after it (the machine's speed drifts); "
        "wall and floor are the rounds' medians, the ratio the median of the rounds' ratios.",
        "",
    ]
    out += _table(
        sizes,
        "reminders",
        [
            (
                "due (expected from the data / floor rows)",
                lambda s: f"{s['due']:,} ({s['due_expected']:,} / {s['floor_rows']:,})",
            ),
            ("reminders sent / messages at the sink", lambda s: f"{s['sent']:,} / {s['mail_messages']:,}"),
            (
                "Celery workers × threads (0: delivered in the bench's process)",
                lambda s: f"{_n(s.get('celery_workers', 0))} × {_n(s.get('sender_threads'))}",
            ),
            ("wall time (median of rounds)", lambda s: _s(s["wall_s"])),
            (
                "wall time, each round (the first: a cold process)",
                lambda s: " / ".join(_s(t) for t in s.get("wall_each_round_s", [s["wall_s"]])),
            ),
            (
                "sending floor, each round",
                lambda s: " / ".join(_s(t) for t in s.get("send_floor_each_round_s", [s["send_floor_s"]])),
            ),
            ("time per reminder sent", lambda s: _ms(s["per_reminder_ms"] / 1000)),
            (
                "queries (per reminder sent; a run in one process)",
                lambda s: f"{s['queries']:,} ({s['queries_per_sent']:.2f})",
            ),
            ("peak memory (tracemalloc; a run in one process)", lambda s: _n(s["peak_memory_mb"], 1, " MiB")),
            ("dry run (the scan alone): wall", lambda s: _ms(s["dry_run_s"])),
            ("dry run: queries", lambda s: _n(s["dry_run_queries"])),
            ("floor: due-rows SQL", lambda s: _ms(s["floor_sql_s"])),
            ("scan / SQL floor", lambda s: _x(s["scan_ratio"])),
            (
                "floor: sending (per message)",
                lambda s: f"{_s(s['send_floor_s'])} ({_ms(s['send_floor_per_message_ms'] / 1000)})",
            ),
            ("target: 5 × SQL floor + sending", lambda s: _s(s["target_s"])),
            ("wall / target (median of the rounds' ratios; issue 11 asks ≤ 2×)", lambda s: _x(s["ratio_to_target"])),
        ],
    )
    out += [
        "",
        SECTIONS[1],
        "",
        "Django's test client as a signed-in superuser (second factor verified as the tests do), median of "
        "interleaved requests. Floor: Django's stock changelist of Institution (the same rows, a stock ModelAdmin) "
        "on a separate AdminSite; runs before 2026-11-28 used the stock changelist of Contact (one per institution).",
        "",
    ]
    rows = []
    for key, label in ADMIN_LABELS.items():
        rows += [
            (f"{label}: median, queries", lambda s, k=key: f"{_ms(s[k]['median_s'])}, {_n(s[k]['queries'])}"),
            (f"{label}: rows matched", lambda s, k=key: _n(s[k]["rows_reported"])),
            (f"{label} / floor", lambda s, k=key: _x(s[f"ratio_{k}"])),
        ]
    rows += [
        ("default view: its three slowest queries", lambda s: _slowest(s["default"])),
        ("expiring ≤ 30 days: its three slowest queries", lambda s: _slowest(s["expiring_30"])),
        (
            "floor (stock changelist): median, queries",
            lambda s: f"{_ms(s['floor']['median_s'])}, {s['floor']['queries']:,}",
        ),
        ("floor: rows", lambda s: _n(s["floor"]["rows_reported"])),
        ("floor: its three slowest queries", lambda s: _slowest(s["floor"])),
    ]
    out += _table(sizes, "admin", rows)
    out += [
        "",
        SECTIONS[2] + " (gunicorn on loopback, wrk)",
        "",
        "A valid submission (form, CSRF, rate limits, live check against the fake CD2 gateway with no added latency, "
        "key stored, receipt mailed) to a fresh single-use link per request. Floor (fair, issue 29): a view that "
        "reads the same form, makes the same two gateway calls with requests, encrypts the Secret once (Fernet) and "
        "INSERTs one row; same gunicorn, middleware and CSRF. Best of the rounds; throughput counts rows actually "
        "written.",
        "",
    ]
    out += _table(
        sizes,
        "submission",
        [
            ("gunicorn workers / wrk connections", lambda s: f"{s['workers']} / {s['connections']}"),
            ("submission: valid submissions/s", lambda s: _n(s["submission"]["rps"], 1)),
            ("submission: median latency", lambda s: _n(s["submission"]["median_latency_ms"], 1, " ms")),
            ("submission: p99 latency", lambda s: _n(s["submission"]["p99_latency_ms"], 1, " ms")),
            (
                "submission: keys stored / requests (errors)",
                lambda s: (
                    f"{s['submission']['written']:,} / {s['submission']['requests']:,} ({s['submission']['errors']})"
                ),
            ),
            ("floor: rows/s", lambda s: _n(s["floor"]["rps"], 1)),
            ("floor: median latency", lambda s: _n(s["floor"]["median_latency_ms"], 1, " ms")),
            ("submission / floor throughput", lambda s: _x(s["throughput_ratio"])),
        ],
    )
    out += [
        "",
        SECTIONS[3],
        "",
        "`manage.py rotate_encryption_keys` over every key (two encrypted columns each). Floor: MultiFernet.rotate "
        "over the same values, then one bulk UPDATE (COPY into a temporary table, UPDATE … FROM).",
        "",
    ]
    out += _table(
        sizes,
        "rotation",
        [
            ("rows", lambda s: _n(s["rows"])),
            ("command: time", lambda s: _s(s["command_s"])),
            ("command: rows/s", lambda s: _n(s["command_rows_per_s"])),
            ("floor: time", lambda s: _s(s["floor_s"])),
            ("floor: rows/s", lambda s: _n(s["floor_rows_per_s"])),
            ("command / floor speed", lambda s: _x(s["speed_ratio"])),
        ],
    )
    out += [
        "",
        SECTIONS[4] + " (daily check of every active key)",
        "",
        "(a) The beat task at full size: its messages on Redis (one per key, or one per batch of 1,000 keys), "
        "countdowns spread over check_spread_seconds() (read back from the queue). "
        "(b) A sample through a real Celery worker against the "
        "fake gateway with a rate limit, at the design's rate (compressed to at most a minute): spacing from the "
        "gateway's request timestamps. (c) What one check costs, next to the bare CD2 call.",
        "",
    ]
    out += _table(
        sizes,
        "key_checks",
        [
            ("active keys", lambda s: _n(s["active_keys"])),
            ("design spread", lambda s: _s(s["design_spread_s"])),
            (
                "(a) keys scheduled (messages in the queue)",
                lambda s: f"{s['schedule']['scheduled']:,} ({s['schedule']['queued']:,})",
            ),
            (
                "(a) time to queue them (per key)",
                lambda s: f"{_s(s['schedule']['seconds'])} ({_ms(s['schedule']['per_task_ms'] / 1000)})",
            ),
            ("(a) queries", lambda s: _n(s["schedule"]["queries"])),
            (
                "(a) message ETAs span / median gap",
                lambda s: f"{_s(s['schedule']['span_s'])} / {_s(s['schedule']['gap_median_s'])}",
            ),
            ("(a) most messages due in one second", lambda s: _n(s["schedule"]["max_in_one_second"])),
            ("gateway requests/s the design needs (2 per key)", lambda s: _n(s["required_gateway_rps"], 1)),
            ("fake gateway's rate limit", lambda s: _n(s["gateway_rate_limit"], 1, " req/s")),
            (
                "(b) sample keys over (designed gap)",
                lambda s: (
                    f"{s['sample']['keys']:,} over {_s(s['sample']['spread_s'])} ({_ms(s['sample']['designed_gap_s'])})"
                ),
            ),
            (
                "(b) checked OK / logins / rate-limited (429)",
                lambda s: (
                    f"{s['sample']['checked_ok']:,} / {s['sample']['logins']:,} / {s['sample']['rate_limited']:,}"
                ),
            ),
            ("(b) duration, first call to last", lambda s: _s(s["sample"]["duration_s"])),
            (
                "(b) login gaps: median / p95 / max",
                lambda s: (
                    f"{_ms(s['sample']['login_gap_median_s'])} / "
                    f"{_ms(s['sample']['login_gap_p95_s'])} / {_ms(s['sample']['login_gap_max_s'])}"
                ),
            ),
            ("(b) most logins in one second", lambda s: _n(s["sample"]["login_max_in_one_second"])),
            ("(c) one check (credential_verify)", lambda s: _ms(s["cost"]["per_check_ms"] / 1000)),
            ("(c) floor: bare check_key", lambda s: _ms(s["cost"]["bare_check_ms"] / 1000)),
            ("(c) queries per check", lambda s: _n(s["cost"]["queries_per_check"], 1)),
            ("projected: one worker busy for", lambda s: _s(s["projected_worker_busy_s"])),
            ("projected: daily check takes", lambda s: _s(s["projected_duration_s"])),
        ],
    )
    out += [
        "",
        SECTIONS[5],
        "",
        "(a) `GET /api/v1/institutions/<slug>/key` through gunicorn on loopback with wrk, a different institution's "
        "usable key per request in turn (token check, scope, rate limit, decryption, one hand-off audit row per "
        "read). Floor: a trivial view with the same token authentication, scope check, rate limit and renderer "
        "that answers a constant; under it, a plain view through the project's middleware with no DRF and no "
        "token. Best of the rounds. (b) `GET /api/v1/keys/` (first page; key state, hint, region, "
        "expiry, last check per institution) in process, median of interleaved repeats. Floor: DRF's stock "
        "ListAPIView with a ModelSerializer over the same institutions and the same cursor pagination.",
        "",
    ]
    out += _table(
        sizes,
        "api",
        [
            ("gunicorn workers / wrk connections", lambda s: f"{s['workers']} / {s['connections']}"),
            ("(a) key reads/s", lambda s: _n(s["read_load"]["rps"], 1)),
            (
                "(a) key read: median / p99 latency",
                lambda s: (
                    f"{_n(s['read_load']['median_latency_ms'], 1, ' ms')} / "
                    f"{_n(s['read_load']['p99_latency_ms'], 1, ' ms')}"
                ),
            ),
            (
                "(a) reads answered 200 / audit rows written / errors",
                lambda s: f"{s['read_load']['ok']:,} / {s['read_load']['audited']:,} / {s['read_load']['errors']:,}",
            ),
            ("(a) plain unauthenticated view: requests/s", lambda s: _n(s["plain_load"]["rps"], 1)),
            ("(a) floor: requests/s", lambda s: _n(s["floor_load"]["rps"], 1)),
            ("(a) floor / plain view throughput (authentication's cost)", lambda s: _x(s["auth_ratio"])),
            (
                "(a) floor: median / p99 latency",
                lambda s: (
                    f"{_n(s['floor_load']['median_latency_ms'], 1, ' ms')} / "
                    f"{_n(s['floor_load']['p99_latency_ms'], 1, ' ms')}"
                ),
            ),
            ("(a) key reads / floor throughput", lambda s: _x(s["read_ratio"])),
            (
                "(b) list, 100 a page: median, queries",
                lambda s: f"{_ms(s['list']['median_s'])}, {s['list']['queries']}",
            ),
            (
                "(b) floor, 100 a page: median, queries",
                lambda s: f"{_ms(s['floor']['median_s'])}, {s['floor']['queries']}",
            ),
            ("(b) list / floor", lambda s: _x(s["ratio_list"])),
            (
                "(b) list, 500 a page: median, queries",
                lambda s: f"{_ms(s['list_500']['median_s'])}, {s['list_500']['queries']}",
            ),
            (
                "(b) floor, 500 a page: median, queries",
                lambda s: f"{_ms(s['floor_500']['median_s'])}, {s['floor_500']['queries']}",
            ),
            ("(b) list / floor, 500 a page", lambda s: _x(s["ratio_list_500"])),
        ],
    )
    return _without_unmeasured("\n".join(out) + "\n", sizes)


def _without_unmeasured(text: str, sizes: list[dict]) -> str:
    """Drop the sections of figures no size measured (a run with --only)."""
    head, *sections = text.split("\n### ")
    kept = [head]
    for section in sections:
        figure = SECTION_FIGURES.get(next(h for h in SECTIONS if section.startswith(h.removeprefix("### "))), None)
        if figure is None or any(size.get(figure) for size in sizes):
            kept.append(section)
    return "\n### ".join(kept)


def _verdict(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**not met**")


def _current_figures(size: dict) -> list[Figure]:
    """The run's summary figures, and what the reminder run costs beside them (no target set)."""
    rows = _figures(size)
    r = size.get("reminders")
    if r and r.get("queries_per_sent") is not None:
        rows.append(
            (
                "Reminder run, statements per reminder sent",
                f"{r['queries_per_sent']:.2f} ({r['queries']:,} in a run in one process)",
                "—",
                "—",
                "none set",
                None,
            )
        )
    if r and r.get("peak_memory_mb") is not None:
        rows.append(
            (
                "Reminder run, peak memory",
                f"{_n(r['peak_memory_mb'], 1, ' MiB')} (tracemalloc, a run in one process)",
                "—",
                "—",
                "none set",
                None,
            )
        )
    return rows


def _across_sizes(sizes: list[dict]) -> list[tuple[int, Figure]]:
    """Figures that compare two sizes of one run: the submission at 100,000 within 15% of its 10,000 figure."""
    by_n = {size["institutions"]: size for size in sizes}
    small, large = (by_n.get(n, {}).get("submission") for n in (10_000, 100_000))
    if not (small and large):
        return []
    change = large["submission"]["rps"] / small["submission"]["rps"] if small["submission"]["rps"] else None
    return [
        (
            100_000,
            (
                "Submission throughput, 100,000 beside 10,000",
                f"{_n(large['submission']['rps'], 1)} req/s",
                f"{_n(small['submission']['rps'], 1)} req/s at 10,000",
                _x(change),
                "≥ 0.85× (within 15%)",
                change >= 0.85 if change is not None else None,
            ),
        )
    ]


def current_rows(sizes: list[dict], *, measured_on: str) -> list[list[str]]:
    """The current table's rows for what this run measured, each with the run's date."""
    rows = [
        [label, f"{size['institutions']:,}", measured, floor, ratio, target, _verdict(met), measured_on]
        for size in sizes
        for label, measured, floor, ratio, target, met in _current_figures(size)
    ]
    rows += [
        [label, f"{n:,}", measured, floor, ratio, target, _verdict(met), measured_on]
        for n, (label, measured, floor, ratio, target, met) in _across_sizes(sizes)
    ]
    return rows


def _parse_rows(table: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    return [row for row in rows if len(row) > 1 and row[0] != CURRENT_COLUMNS[0] and not row[0].startswith("---")]


def _order(row: list[str]) -> tuple[int, str, int]:
    known = row[0] in FIGURE_ORDER
    size = row[1].replace(",", "")
    return (
        FIGURE_ORDER.index(row[0]) if known else len(FIGURE_ORDER),
        "" if known else row[0],
        int(size) if size.isdigit() else 0,
    )


def current_table_update(text: str, measured: list[list[str]]) -> str:
    """The results text with the rows of (figure, N) this run measured replaced or added; every other row,
    and the text around the table, kept as it was."""
    if CURRENT_START in text and CURRENT_END in text:
        before, rest = text.split(CURRENT_START, 1)
        table, after = rest.split(CURRENT_END, 1)
    else:
        # No table yet (a new file): the table on top, whatever text there was kept below it.
        before, table, after = RESULTS_HEADER, "", ("\n" + text if text.strip() else "")
    rows = {(row[0], row[1]): row for row in _parse_rows(table)}
    rows.update({(row[0], row[1]): row for row in measured})
    lines = ["| " + " | ".join(CURRENT_COLUMNS) + " |", "|---|---:|---:|---:|---:|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in sorted(rows.values(), key=_order)]
    return before + CURRENT_START + "\n".join(lines) + "\n" + CURRENT_END + after


def write_results(path: Path, *, started: dt.datetime, machine: dict, sizes: list[dict], quick: bool) -> None:
    """Put this run's full log on top of the history (HISTORY.md beside `path`, every older run kept below
    it), then rewrite the rows it measured in the current table at `path`."""
    block = render(started=started, machine=machine, sizes=sizes, quick=quick)
    history = path.with_name("HISTORY.md")
    older = ""
    if history.exists():
        text = history.read_text()
        older = text.split(MARKER, 1)[1] if MARKER in text else text
    history.write_text(HISTORY_HEADER + MARKER + "\n" + block + ("\n" + older.lstrip("\n") if older.strip() else ""))
    measured_on = f"{started:%Y-%m-%d %H:%M} UTC, load {machine['load_average'][0]:.2f}{', quick' if quick else ''}"
    text = path.read_text() if path.exists() else ""
    path.write_text(current_table_update(text, current_rows(sizes, measured_on=measured_on)))
