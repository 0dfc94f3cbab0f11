"""One bench run at one size, in its own process: `python -m bench.measure --institutions N --json OUT`.

bench/run.py starts this with the environment it needs (a throwaway
database, fresh FERNET_KEYS, DEBUG off, bench.settings) and reads the JSON.
Each figure is measured next to its floor, in the same process, on the same
data, one right after the other, so the noise of a shared machine hits both.
Generating the data is timed apart and never inside a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import io
import itertools
import json
import os
import re
import secrets
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from pathlib import Path
from urllib.parse import quote, urlencode

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent


# --------------------------------------------------------------------------
# Small tools
# --------------------------------------------------------------------------


class QueryCounter:
    """Counts the statements Django sends (execute and executemany), cheaply, with DEBUG off.

    On this thread's connection and on every connection opened meanwhile.
    """

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        with self._lock:
            self.count += 1
        return execute(sql, params, many, context)

    def _on_connection_created(self, sender, connection, **kwargs) -> None:
        connection.execute_wrappers.append(self)

    @contextlib.contextmanager
    def counting(self):
        from django.db import connection
        from django.db.backends.signals import connection_created

        connection_created.connect(self._on_connection_created)
        try:
            with connection.execute_wrapper(self):
                yield self
        finally:
            connection_created.disconnect(self._on_connection_created)


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or not floor:
        return None
    return value / floor


def profile_to(path: Path | None, fn, *args, **kwargs):
    """Run fn under pyinstrument and write its text report to path (no profile when path is None)."""
    if path is None:
        return fn(*args, **kwargs)
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    try:
        return fn(*args, **kwargs)
    finally:
        profiler.stop()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))


def log_path(name: str) -> Path:
    """Where a server started by the bench writes its output (the run's VAR_DIR, removed afterwards)."""
    return Path(os.environ.get("VAR_DIR", tempfile.gettempdir())) / f"{name}.log"


def log_tail(name: str, lines: int = 20) -> str:
    path = log_path(name)
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def max_id(table: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {connection.ops.quote_name(table)}")  # noqa: S608
        return cursor.fetchone()[0]


def delete_after(marks: dict[str, int]) -> None:
    """Undo a run: delete the rows it added (ids above the marks taken before it)."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table, last in marks.items():
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)} WHERE id > %s", [last])  # noqa: S608


# --------------------------------------------------------------------------
# 1. Reminder run
# --------------------------------------------------------------------------

REMINDER_FLOOR_SQL = """
SELECT c.id, c.expires_on, c.hint, i.name, i.slug, i.timezone, u.email AS owner_email, ct.emails
FROM credentials_cd2credential c
JOIN institutions_institution i ON i.id = c.institution_id
LEFT JOIN auth_user u ON u.id = i.account_owner_id
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN %(today)s - c.expires_on >= %(weekly)s + %(monthly)s
            THEN -(%(weekly)s + ((%(today)s - c.expires_on - %(weekly)s) / %(monthly)s) * %(monthly)s)
        WHEN %(today)s - c.expires_on >= %(weekly)s THEN -%(weekly)s
        WHEN c.expires_on - %(today)s <= -%(repeat)s THEN ((c.expires_on - %(today)s) / %(repeat)s) * %(repeat)s
        WHEN c.expires_on < %(today)s THEN %(first)s
        ELSE (SELECT min(t) FROM unnest(%(thresholds)s::int[]) AS t WHERE t >= c.expires_on - %(today)s)
    END AS step
) s
CROSS JOIN LATERAL (
    SELECT array_agg(email ORDER BY id) AS emails FROM institutions_contact
    WHERE institution_id = i.id AND receives_reminders
) ct
WHERE c.status = 'active' AND i.status IN ('active', 'onboarding') AND c.expires_on <= %(horizon)s
  AND s.step IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM credentials_reminderlog r
      WHERE r.credential_id = c.id AND r.threshold = s.step
  )
"""

REMINDER_TABLES = (
    "credentials_notice",
    "credentials_reminderlog",
    "credentials_submissionlink",
    "credentials_auditevent",
)


def _reminder_floor(*, today: dt.date, now: dt.datetime, repeats: int) -> tuple[float, int]:
    """The bare SQL that selects the due rows with what mailing them needs: (median seconds, rows)."""
    from django.conf import settings
    from django.db import connection

    from credentials.selectors import reminder_cadence_after_expiry

    thresholds = sorted({int(d) for d in settings.REMINDER_DAYS_BEFORE if int(d) >= 0})
    repeat, weekly, monthly = reminder_cadence_after_expiry()
    repeat, weekly = repeat or 1, weekly or 10**6
    params = {
        "today": today,
        "repeat": repeat,
        "weekly": weekly,
        "monthly": monthly or 10**6,
        "first": thresholds[0],
        "thresholds": thresholds,
        "horizon": today + dt.timedelta(days=thresholds[-1]),
    }
    times, rows = [], 0
    with connection.cursor() as cursor:
        for _ in range(repeats):
            started = time.perf_counter()
            cursor.execute(REMINDER_FLOOR_SQL, params)
            rows = len(cursor.fetchall())
            times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def _send_floor(*, messages: int, size: int) -> float:
    """Hand `messages` bare messages of `size` bytes, two recipients each, to the sink over one connection."""
    from django.core.mail import EmailMultiAlternatives, get_connection

    text = ("Your Canvas Data 2 key expires soon. " * (size // 3 // 37 + 1))[: size // 3]
    html = f"<html><body><p>{text}</p><p>{text}</p></body></html>"
    message = EmailMultiAlternatives(
        subject="Canvas Data 2 key for Institution 000001 expires in 14 days",
        body=text,
        to=["it000001@inst000001.example.edu"],
        cc=["owner01@edpotential.example"],
    )
    message.attach_alternative(html, "text/html")
    message.attach("expiry.ics", "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "text/calendar")
    started = time.perf_counter()
    with get_connection() as smtp:
        for _ in range(messages):
            smtp.send_messages([message])
    return time.perf_counter() - started


# The delivering side of the reminder run, as issue 22 sets it: two Celery
# workers of three threads each.
BENCH_WORKERS, BENCH_WORKER_THREADS = 2, 3


@contextlib.contextmanager
def _celery_workers(*, count: int, concurrency: int, env: dict):
    """`count` Celery workers (thread pool, `concurrency` each) on the run's own queue, for the block."""
    logs = [f"celery-worker-{n}" for n in range(count)]
    workers = []
    for n, name in enumerate(logs):
        handle = log_path(name).open("w")
        workers.append(
            (
                subprocess.Popen(
                    [
                        sys.executable, "-m", "celery", "-A", "edpotential", "worker",
                        "--pool", "threads", "--concurrency", str(concurrency), "--purge",
                        "--without-gossip", "--without-mingle", "--without-heartbeat",
                        "--loglevel", "WARNING", "--hostname", f"bench-{n}-{os.getpid()}@%h",
                    ],
                    cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                ),
                handle,
            )
        )  # fmt: skip
    try:
        # Ready when each answers a ping (their logs are at WARNING, as the run's: no "ready." line to wait for).
        from edpotential.celery import app

        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5)) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("The Celery workers did not start:\n" + "\n".join(log_tail(name) for name in logs))
        yield
    finally:
        for process, _handle in workers:
            os.killpg(process.pid, signal.SIGTERM)
        for process, handle in workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            handle.close()


def _in_one_process(*, today, now):
    """The run decided and delivered in this process (tasks not published), as the workers would deliver it."""
    from unittest import mock

    from credentials.services import jobs, outbox, reminders

    with mock.patch.object(jobs, "job_enqueue"):
        run = reminders.reminders_send_due(today=today, now=now)
    outbox.outbox_deliver_due(now=run.now)
    return reminders.reminders_report(run)


def _costliest_hour(now: dt.datetime) -> dt.datetime:
    """The hour (at REMINDERS_MINUTE) of the next 24 when the most zones of the data have passed REMINDERS_HOUR."""
    from django.conf import settings

    from bench.generate import TIMEZONES
    from credentials.days import zone_days

    not_before = dt.time(settings.REMINDERS_HOUR, settings.REMINDERS_MINUTE)
    start = now.astimezone(dt.UTC).replace(minute=settings.REMINDERS_MINUTE, second=0, microsecond=0)

    def reached(at: dt.datetime) -> int:
        zones = set().union(*(names for _, names in zone_days(at, not_before=not_before)))
        return len(zones & set(TIMEZONES))

    return max((start + dt.timedelta(hours=h) for h in range(24)), key=reached)


def measure_reminders(ctx: Context) -> dict:
    """The reminder run, from decision to last mail delivered by two Celery workers, beside its floors.

    Each round starts from the same state: the run decides and queues
    (reminders_send_due, as beat and the command do), BENCH_WORKERS workers
    of BENCH_WORKER_THREADS threads deliver, and the round ends when the
    last notice the run decided is sent (reminders_wait). The machine is
    shared and its speed drifts by the minute, so each round is followed at
    once by its own sending floor for the messages it sent; the figures are
    the medians, the ratio the median of the rounds' ratios. Without Redis
    (a memory broker cannot reach another process) the run delivers in this
    process instead, and says so.
    """
    from django.conf import settings
    from django.utils import timezone

    from credentials.services.reminders import reminders_send_due, reminders_wait

    today, now = ctx.today, timezone.now()
    floor_s, floor_rows = _reminder_floor(today=today, now=now, repeats=ctx.repeats)

    dry_queries = QueryCounter()
    with dry_queries.counting():
        dry_s, dry = timed(reminders_send_due, today=today, now=now, dry_run=True)

    # The hourly beat run (scheduled=True) scans only the institutions whose
    # clock has passed REMINDERS_HOUR; timed at the hour of the coming day
    # when the most of the data's zones have (its costliest run).
    hourly_at = _costliest_hour(now)
    hourly_queries = QueryCounter()
    with hourly_queries.counting():
        hourly_s, hourly = timed(reminders_send_due, now=hourly_at, dry_run=True, scheduled=True)

    marks = {table: max_id(table) for table in REMINDER_TABLES}
    with_workers = settings.CELERY_BROKER_URL.startswith("redis://")

    def one_round():
        if not with_workers:
            return _in_one_process(today=today, now=now)
        run = reminders_send_due(today=today, now=now)
        if not reminders_wait(run, timeout=600, poll=0.05):
            raise RuntimeError(f"The workers left {run.waiting} notice(s) untried after 600 s")
        return run

    rounds = []
    workers = _celery_workers(count=BENCH_WORKERS, concurrency=BENCH_WORKER_THREADS, env=dict(os.environ))
    with workers if with_workers else contextlib.nullcontext():
        for _ in range(1 if ctx.quick else 3):
            delete_after(marks)
            ctx.sink.reset()
            run_s, run = timed(one_round)
            mail = ctx.sink.count()
            per_message = mail["bytes"] // mail["messages"] if mail["messages"] else 2000
            ctx.sink.reset()
            send_floor_s = _send_floor(messages=mail["messages"], size=per_message) if mail["messages"] else 0.0
            target_s = 5 * floor_s + send_floor_s
            rounds.append(
                {
                    "wall_s": run_s,
                    "send_floor_s": send_floor_s,
                    "ratio": ratio(run_s, target_s),
                    "run": run,
                    "mail": mail,
                }
            )

    # Again from the same state, decided and delivered in this process (its
    # statements are counted and its memory traced; a worker's are not), for
    # the statements and the peak memory (tracemalloc slows the run, so it
    # is not a timed one) and, if asked, the profile.
    delete_after(marks)
    one_process = QueryCounter()
    with one_process.counting():
        tracemalloc.start()
        again = _in_one_process(today=today, now=now)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if ctx.profile_dir:
        delete_after(marks)
        profile_to(ctx.profile_path("reminders"), _in_one_process, today=today, now=now)

    run, mail, queries = rounds[0]["run"], rounds[0]["mail"], one_process.count
    sent = run.sent
    wall_s = statistics.median(r["wall_s"] for r in rounds)
    send_floor_s = statistics.median(r["send_floor_s"] for r in rounds)
    ratios = [r["ratio"] for r in rounds if r["ratio"] is not None]
    return {
        "due_expected": ctx.generated.expected_due,
        "floor_rows": floor_rows,
        "due": run.due,
        "sent": sent,
        "failed": run.failed,
        "skipped": run.skipped,
        "sent_again_from_same_state": again.sent,
        "sent_each_round": [r["run"].sent for r in rounds],
        "mail_messages": mail["messages"],
        "mail_recipients": mail["recipients"],
        "celery_workers": BENCH_WORKERS if with_workers else 0,
        "sender_threads": BENCH_WORKER_THREADS if with_workers else 1,
        "rounds": len(rounds),
        "wall_s": wall_s,
        "wall_each_round_s": [r["wall_s"] for r in rounds],
        "send_floor_each_round_s": [r["send_floor_s"] for r in rounds],
        "ratio_each_round": [r["ratio"] for r in rounds],
        "queries": queries,
        "queries_per_sent": queries / sent if sent else None,
        "peak_memory_mb": peak / 2**20,
        "per_reminder_ms": 1000 * wall_s / sent if sent else None,
        "dry_run_s": dry_s,
        "dry_run_due": dry.due,
        "dry_run_queries": dry_queries.count,
        "floor_sql_s": floor_s,
        "send_floor_s": send_floor_s,
        "send_floor_per_message_ms": 1000 * send_floor_s / mail["messages"] if mail["messages"] else None,
        "scan_ratio": ratio(dry_s, floor_s),
        "hourly_at": hourly_at.isoformat(),
        "hourly_s": hourly_s,
        "hourly_due": hourly.due,
        "hourly_queries": hourly_queries.count,
        "hourly_ratio": ratio(hourly_s, floor_s),
        "target_s": 5 * floor_s + send_floor_s,
        "ratio_to_target": statistics.median(ratios) if ratios else None,
    }


# --------------------------------------------------------------------------
# 2. Admin institution list
# --------------------------------------------------------------------------

# The staff list by default and with each of its filters (one value each), and the floor:
# Django's stock changelist of Institution on a separate AdminSite (bench/floor.py).
ADMIN_LIST = "/admin/institutions/institution/"
ADMIN_VIEWS = {
    "default": ADMIN_LIST,
    "expiring_30": ADMIN_LIST + "?expiry=30",
    "expired": ADMIN_LIST + "?expiry=expired",
    "this_month": ADMIN_LIST + "?expiry=this-month",
    "expiry_ok": ADMIN_LIST + "?expiry=ok",
    "no_key": ADMIN_LIST + "?expiry=none",
    "failing": ADMIN_LIST + "?check=failing",
    "pending": ADMIN_LIST + "?check=pending",
    "never_checked": ADMIN_LIST + "?check=never",
    "missing": ADMIN_LIST + "?check=missing",
    "reminded": ADMIN_LIST + "?reminded=no-answer",
    "mine": ADMIN_LIST + "?mine=1",
    "served": ADMIN_LIST + "?served=1",
    "status": ADMIN_LIST + "?status__exact=active",
    "region": ADMIN_LIST + "?region=eu-west-1",
    "owner": ADMIN_LIST + "?account_owner__id__exact={owner}",
    "floor": "/bench/admin/institutions/institution/",
}


def _staff_client():
    """The test client signed in as the bench superuser, second factor verified as the tests do it."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from bench.generate import BENCH_ADMIN

    user = get_user_model().objects.get(username=BENCH_ADMIN)
    client = Client()
    client.force_login(user)
    if "django_otp" in settings.INSTALLED_APPS:
        from django_otp import DEVICE_ID_SESSION_KEY
        from django_otp.plugins.otp_static.models import StaticDevice

        device, _ = StaticDevice.objects.get_or_create(user=user, name="bench", defaults={"confirmed": True})
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
    return client


def measure_admin(ctx: Context) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from institutions.models import Institution

    client = _staff_client()
    owner = Institution.objects.filter(account_owner__isnull=False).order_by("pk").values("account_owner").first()
    views = {name: url.format(owner=owner["account_owner"] if owner else 0) for name, url in ADMIN_VIEWS.items()}
    out: dict = {}
    for name, url in views.items():
        for _ in range(2):  # warm up templates and caches
            response = client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}, not 200 (signed-in staff expected)")
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
        body = response.content.decode()
        shown = re.search(r"(\d[\d,]*) (?:institutions?|contacts?)\b", body)
        slowest = sorted(captured.captured_queries, key=lambda q: float(q["time"]), reverse=True)[:3]
        out[name] = {
            "url": url,
            "queries": len(captured.captured_queries),
            "slowest_queries": [{"ms": 1000 * float(q["time"]), "sql": q["sql"][:4000]} for q in slowest],
            "rows_reported": int(shown.group(1).replace(",", "")) if shown else None,
            "bytes": len(response.content),
        }
    _time_interleaved(client, views, out, repeats=ctx.repeats)
    if ctx.profile_dir:
        for name in ("default", "expiring_30", "floor"):
            profile_to(ctx.profile_path(f"admin-{name}"), client.get, views[name])
    floor = out["floor"]["median_s"]
    for name in views.keys() - {"floor"}:
        out[f"ratio_{name}"] = ratio(out[name]["median_s"], floor)
    return out


# --------------------------------------------------------------------------
# 3. Submission through gunicorn
# --------------------------------------------------------------------------


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/k/received/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer on 127.0.0.1:{port} within {timeout:.0f} s") from None
            time.sleep(0.2)


def _wrk_script(*, script: str, port: int, lines: list[str], seconds: float, connections: int, env: dict) -> dict:
    """Run wrk with one of bench/*.lua for `seconds`; `lines` reach the script as the file named in BENCH_LINES.

    The script prints its figures as one "BENCH_JSON {...}" line (bench/wrk_report.lua, which both scripts load).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lines", delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
        lines_path = handle.name
    try:
        result = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--timeout",
                "30s",
                "-s",
                str(BENCH_DIR / script),
                f"http://127.0.0.1:{port}",
            ],
            env={**env, "BENCH_LINES": lines_path},
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    finally:
        os.unlink(lines_path)
    line = next(line for line in result.stdout.splitlines() if line.startswith("BENCH_JSON "))
    return json.loads(line.removeprefix("BENCH_JSON "))


def _wrk(*, port: int, prefix: str, tokens: list[str], seconds: float, connections: int, env: dict) -> dict:
    """POSTs to prefix + token (wrk_post.lua), one line of `tokens` per request."""
    return _wrk_script(
        script="wrk_post.lua",
        port=port,
        lines=tokens,
        seconds=seconds,
        connections=connections,
        env={**env, "BENCH_PATH_PREFIX": prefix},
    )


def _time_interleaved(client, views: dict[str, str], out: dict, *, repeats: int) -> None:
    """GET each view `repeats` times in interleaved rounds and store out[name]["median_s"].

    Interleaved: a burst of noise on the shared machine hits every view alike.
    """
    times: dict[str, list[float]] = {name: [] for name in views}
    for _ in range(repeats):
        for name, url in views.items():
            started = time.perf_counter()
            client.get(url)
            times[name].append(time.perf_counter() - started)
    for name in views:
        out[name]["median_s"] = statistics.median(times[name])


def _count(sql: str, params=()) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


FLOOR_EMAIL = "floor@bench.example.edu"
SUBMITTER_EMAIL = "ada@bench.example.edu"


def measure_submission(ctx: Context) -> dict:
    from django.conf import settings

    from bench.generate import end_bench_links, fresh_keys, submission_links
    from devtools.fake_gateway import FakeGateway

    seconds, rounds, connections = ctx.load_seconds, ctx.load_rounds, ctx.load_connections
    # Generous: a link per request at up to 400 requests a second; a run that
    # ran out would reuse links, and the check below would show it.
    # One open link per institution: a run's links are made before it (one per free institution)
    # and what it left unused is ended after it.
    per_run = int(400 * seconds) + 200
    # A key of its own per request, which the fake gateway accepts: the same
    # Client ID twice is refused as on file (one key, one institution), so a
    # shared key measured refusals, 0.0 accepted submissions a second.
    fresh = fresh_keys(per_run * (rounds + 2))  # warm-up, rounds, profile
    # Django's CSRF secret: 32 letters and digits, sent as the cookie and the form field alike.
    csrf = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))

    def form(email: str, client_id: str = "__CLIENT_ID__", secret: str = "__SECRET__") -> dict:  # noqa: S107
        return {
            "csrfmiddlewaretoken": csrf,
            "client_id": client_id,
            "secret": secret,
            "expiry_period": "1y",
            "expires_on": "",
            "submitted_by": "Ada Admin",
            "submitted_by_email": email,
        }

    # wrk_post.lua puts each request's key in place of __CLIENT_ID__ and __SECRET__.
    body, floor_body = urlencode(form(SUBMITTER_EMAIL)), urlencode(form(FLOOR_EMAIL))
    pool = sorted(ctx.generated.key_pool.items())
    workers = ctx.workers
    out: dict = {"workers": workers, "connections": connections, "seconds": seconds, "rounds": rounds, "runs": []}
    with FakeGateway(keys={**ctx.generated.key_pool, **dict(fresh)}) as gateway:
        env = {**os.environ, "CD2_API_URL": gateway.url}
        with _gunicorn(workers=workers, env=env, log_name="gunicorn") as port:
            wrk_env = {**env, "BENCH_COOKIE": f"{settings.CSRF_COOKIE_NAME}={csrf}"}
            take = iter(range(0, len(fresh), per_run))

            def run(kind: str, warm: bool = False) -> dict:
                if kind == "submission":
                    start = next(take)
                    tokens = submission_links(count=per_run)
                    batch = [
                        f"{token}\t{quote(client_id, safe='')}\t{quote(secret, safe='')}"
                        for token, (client_id, secret) in zip(tokens, fresh[start : start + len(tokens)], strict=True)
                    ]
                    prefix, run_body = "/k/", body
                    before = _count("SELECT count(*) FROM credentials_submissionlink WHERE used_at IS NOT NULL")
                else:
                    # The fair floor checks a key the gateway accepts (two calls), from the pool in turn.
                    batch = [
                        f"{secrets.token_urlsafe(32)}\t{quote(client_id, safe='')}\t{quote(secret, safe='')}"
                        for client_id, secret in itertools.islice(itertools.cycle(pool), per_run)
                    ]
                    prefix, run_body = "/bench/floor/", floor_body
                    before = _count("SELECT count(*) FROM credentials_auditevent WHERE actor_label = %s", [FLOOR_EMAIL])
                result = _wrk(
                    port=port,
                    prefix=prefix,
                    tokens=batch,
                    seconds=1 if warm else seconds,
                    connections=connections,
                    env={**wrk_env, "BENCH_BODY": run_body},
                )
                if kind == "submission":
                    after = _count("SELECT count(*) FROM credentials_submissionlink WHERE used_at IS NOT NULL")
                    end_bench_links()
                else:
                    after = _count("SELECT count(*) FROM credentials_auditevent WHERE actor_label = %s", [FLOOR_EMAIL])
                result.update(kind=kind, written=after - before)
                result["rps"] = result["written"] / (result["duration_us"] / 1e6)
                return result

            ctx.sink.reset()
            run("floor", warm=True)
            run("submission", warm=True)
            for _ in range(rounds):
                out["runs"].append(run("floor"))
                out["runs"].append(run("submission"))
            out["mail_messages"] = ctx.sink.count()["messages"]
            out["gateway_requests"] = len(gateway.requests)
            if ctx.profile_dir:
                # The same view in this process (no gunicorn), for where the time goes.
                from django.test import Client
                from django.test.utils import override_settings

                start = next(take)
                tokens = submission_links(count=20)
                client, spare = Client(), list(zip(tokens, fresh[start : start + len(tokens)], strict=True))
                with override_settings(CD2_API_URL=gateway.url):
                    profile_to(
                        ctx.profile_path("submission"),
                        lambda: [
                            client.post(
                                f"/k/{token}/", form(SUBMITTER_EMAIL, *key), HTTP_X_FORWARDED_FOR=f"198.19.0.{i}"
                            )
                            for i, (token, key) in enumerate(spare)
                        ],
                    )
    for kind in ("floor", "submission"):
        runs = [r for r in out["runs"] if r["kind"] == kind]
        best = max(runs, key=lambda r: r["rps"])
        out[kind] = {
            "rps": best["rps"],
            "median_latency_ms": best["p50_us"] / 1000,
            "p99_latency_ms": best["p99_us"] / 1000,
            "requests": sum(r["requests"] for r in runs),
            "written": sum(r["written"] for r in runs),
            "errors": sum(r["status_errors"] + r["connect_errors"] + r["read_errors"] + r["timeouts"] for r in runs),
        }
    out["throughput_ratio"] = ratio(out["submission"]["rps"], out["floor"]["rps"])
    return out


# --------------------------------------------------------------------------
# 4. Key rotation
# --------------------------------------------------------------------------


def _rotation_floor(*, new_key: str, old_key: str) -> tuple[float, int]:
    """MultiFernet.rotate over every stored value, then one bulk UPDATE: the least a rotation can do."""
    from cryptography.fernet import Fernet, MultiFernet
    from django.db import connection, transaction

    from bench.generate import copy_rows

    multi = MultiFernet([Fernet(new_key), Fernet(old_key)])
    started = time.perf_counter()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, client_id, secret FROM credentials_cd2credential ORDER BY id FOR UPDATE")
            rows = [
                (pk, multi.rotate(a.encode()).decode(), multi.rotate(b.encode()).decode())
                for pk, a, b in cursor.fetchall()
            ]
            cursor.execute("CREATE TEMP TABLE bench_rotated (id bigint, client_id text, secret text) ON COMMIT DROP")
            copy_rows("bench_rotated", ("id", "client_id", "secret"), rows)
            cursor.execute(
                "UPDATE credentials_cd2credential c SET client_id = r.client_id, secret = r.secret "
                "FROM bench_rotated r WHERE r.id = c.id"
            )
    return time.perf_counter() - started, len(rows)


def measure_rotation(ctx: Context) -> dict:
    from cryptography.fernet import Fernet
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import override_settings

    original = list(settings.FERNET_KEYS)
    floor_key, command_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    floor_s, rows = _rotation_floor(new_key=floor_key, old_key=original[0])
    keys = [command_key, floor_key, *original]
    with override_settings(FERNET_KEYS=keys):
        output = io.StringIO()
        command_s, _ = timed(call_command, "rotate_encryption_keys", stdout=output)
        done = re.search(r"Done: (\d+) rows re-encrypted", output.getvalue())
        rotated = int(done.group(1)) if done else None
        # Proof it happened: a stored value now opens with the command's key alone.
        with connection.cursor() as cursor:
            cursor.execute("SELECT secret FROM credentials_cd2credential ORDER BY id DESC LIMIT 1")
            Fernet(command_key).decrypt(cursor.fetchone()[0].encode())
        if ctx.profile_dir:
            with override_settings(FERNET_KEYS=[Fernet.generate_key().decode(), *keys]):
                profile_to(ctx.profile_path("rotation"), call_command, "rotate_encryption_keys", stdout=io.StringIO())
    floor_rps = rows / floor_s
    command_rps = rotated / command_s if rotated else None
    return {
        "rows": rows,
        "rotated": rotated,
        "command_s": command_s,
        "command_rows_per_s": command_rps,
        "floor_s": floor_s,
        "floor_rows_per_s": floor_rps,
        "speed_ratio": ratio(command_rps, floor_rps),
    }


# --------------------------------------------------------------------------
# 5. Daily key checks
# --------------------------------------------------------------------------


def _queue_etas(broker_url: str, queue: str, *, queued_at: dt.datetime) -> list[dt.datetime]:
    """ETAs of the tasks waiting in the Redis queue (kombu's JSON envelope); queued_at for those due at once."""
    import redis

    client = redis.Redis.from_url(broker_url)
    etas = []
    for start in range(0, client.llen(queue), 5000):
        for raw in client.lrange(queue, start, start + 4999):
            eta = json.loads(raw).get("headers", {}).get("eta")
            etas.append(dt.datetime.fromisoformat(eta) if eta else queued_at)
    return etas


def _queue_length(broker_url: str, queue: str) -> int:
    import redis

    return redis.Redis.from_url(broker_url).llen(queue)


def _purge(broker_url: str, queue: str) -> None:
    import redis

    redis.Redis.from_url(broker_url).delete(queue)


def _spacing(stamps: list[float]) -> dict:
    stamps = sorted(stamps)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    per_second: dict[int, int] = {}
    for stamp in stamps:
        second = int(stamp - stamps[0])
        per_second[second] = per_second.get(second, 0) + 1
    return {
        "count": len(stamps),
        "span_s": stamps[-1] - stamps[0] if stamps else 0.0,
        "gap_median_s": statistics.median(gaps) if gaps else None,
        "gap_p95_s": statistics.quantiles(gaps, n=20)[-1] if len(gaps) >= 2 else None,
        "gap_max_s": max(gaps) if gaps else None,
        "max_in_one_second": max(per_second.values()) if per_second else 0,
    }


def _served_active_ids() -> list[int]:
    from credentials.models import CD2Credential
    from institutions.models import Institution

    return list(
        CD2Credential.objects.filter(
            status=CD2Credential.Status.ACTIVE, institution__status__in=Institution.SERVED_STATUSES
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _per_check_cost(ctx: Context, ids: list[int]) -> dict:
    """credential_verify one key after another, next to the bare check_key call for the same keys."""
    from django.test.utils import override_settings

    from credentials.cd2 import check_key
    from credentials.services.verification import credential_verify
    from devtools.fake_gateway import FakeGateway

    pool = list(ctx.generated.key_pool.items())
    with FakeGateway(keys=ctx.generated.key_pool) as gateway, override_settings(CD2_API_URL=gateway.url):
        started = time.perf_counter()
        for client_id, secret in pool[: len(ids)]:
            check_key(client_id=client_id, secret=secret, base_url=gateway.url, timeout=(5, 20))
        floor_s = time.perf_counter() - started
        queries = QueryCounter()
        with queries.counting():
            started = time.perf_counter()
            for credential_id in ids:
                credential_verify(credential_id=credential_id)
            verify_s = time.perf_counter() - started
    n = len(ids)
    return {
        "sampled": n,
        "per_check_ms": 1000 * verify_s / n,
        "bare_check_ms": 1000 * floor_s / min(n, len(pool)),
        "queries_per_check": queries.count / n,
    }


def measure_key_checks(ctx: Context) -> dict:
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from credentials.services.verification import check_spread_seconds, credentials_verify_active
    from devtools.fake_gateway import LOGIN_PATH, TABLES_PATH, FakeGateway

    broker, queue = settings.CELERY_BROKER_URL, settings.CELERY_TASK_DEFAULT_QUEUE
    if not broker.startswith("redis://"):
        raise RuntimeError("the key-check figure needs the Redis broker (CELERY_BROKER_URL=redis://...)")
    ids = _served_active_ids()
    # The window the daily task really uses: it grows with the number of keys
    # so the gateway never sees more than CD2_GATEWAY_REQUESTS_PER_SECOND.
    design_spread = check_spread_seconds(keys=len(ids))
    out: dict = {"active_keys": len(ids), "design_spread_s": design_spread, "gateway_rate_limit": ctx.gateway_rate}

    # (a) The daily task at full size: its messages (one per key, or one per
    # batch of keys above CHECK_BATCH_SIZE) and their countdowns over the spread.
    _purge(broker, queue)
    queries = QueryCounter()
    queued_at = timezone.now()
    with queries.counting():
        schedule_s, scheduled = timed(credentials_verify_active)
    etas = _queue_etas(broker, queue, queued_at=queued_at)
    _purge(broker, queue)
    first = min(etas) if etas else None
    offsets = [(eta - first).total_seconds() for eta in etas] if first else []
    out["schedule"] = {
        "scheduled": scheduled.scheduled,
        "queued": len(etas),
        "seconds": schedule_s,
        "queries": queries.count,
        "per_task_ms": 1000 * schedule_s / scheduled.scheduled if scheduled.scheduled else None,
        **_spacing(offsets),
    }
    out["required_gateway_rps"] = 2 * len(ids) / design_spread  # login + table list per key

    # (b) A sample through a real Celery worker at the design's rate (compressed
    # to at most sample_seconds), against a rate-limited fake gateway.
    design_rate = len(ids) / design_spread
    sample = max(20, min(len(ids), round(design_rate * ctx.sample_seconds)))
    sample_ids = ids[:sample]
    spread = min(sample / design_rate, ctx.sample_seconds)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE institutions_institution SET status = status || '-bench' WHERE status IN ('active', 'onboarding') "
            "AND id NOT IN (SELECT institution_id FROM credentials_cd2credential WHERE id = ANY(%s))",
            [sample_ids],
        )
    worker = None
    try:
        with FakeGateway(keys=ctx.generated.key_pool, rate_limit_per_second=ctx.gateway_rate) as gateway:
            env = {**os.environ, "CD2_API_URL": gateway.url}
            worker_log = log_path("celery-worker").open("w")
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "edpotential",
                    "worker",
                    "--pool",
                    "solo",
                    "-Q",
                    queue,
                    "--without-gossip",
                    "--without-mingle",
                    "-l",
                    "WARNING",
                ],
                cwd=ROOT,
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            from edpotential.celery import app

            deadline = time.monotonic() + 60
            while not app.control.ping(timeout=1.0):
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"the Celery worker did not start:\n{log_tail('celery-worker')}")
            started_at, started = timezone.now(), time.monotonic()
            credentials_verify_active(spread_seconds=spread)
            deadline = started + spread + 120
            while time.monotonic() < deadline:
                time.sleep(1.0)
                if time.monotonic() < started + spread:
                    continue
                inspect = app.control.inspect(timeout=1.0)
                busy = any(
                    tasks
                    for reply in (inspect.scheduled() or {}, inspect.reserved() or {}, inspect.active() or {})
                    for tasks in reply.values()
                )
                if not busy and not _queue_length(broker, queue):
                    break
            requests = gateway.requests
        logins = [r.timestamp for r in requests if r.path == LOGIN_PATH]
        tables = [r for r in requests if r.path == TABLES_PATH]
        from credentials.models import CD2Credential

        checked = CD2Credential.objects.filter(pk__in=sample_ids, last_verified_at__gte=started_at).count()
        out["sample"] = {
            "keys": sample,
            "spread_s": spread,
            "designed_gap_s": spread / sample,
            "checked_ok": checked,
            "logins": len(logins),
            "table_calls": len(tables),
            "rate_limited": len(logins) - len(tables),
            "duration_s": (max(r.timestamp for r in requests) - started) if requests else None,
            **{f"login_{k}": v for k, v in _spacing(logins).items()},
        }
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
            worker_log.close()
        _purge(broker, queue)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE institutions_institution SET status = replace(status, '-bench', '') "
                "WHERE status LIKE '%%-bench'"
            )

    # (c) What one check costs the worker, next to the bare CD2 call.
    out["cost"] = _per_check_cost(ctx, ids[sample : sample + min(200, max(20, len(ids) - sample))] or ids[:20])
    per_check = out["cost"]["per_check_ms"] / 1000
    out["projected_worker_busy_s"] = per_check * len(ids)
    out["projected_duration_s"] = max(design_spread, out["projected_worker_busy_s"])
    return out


# --------------------------------------------------------------------------
# 6. The pipeline API: key reads through gunicorn, the key list in process
# --------------------------------------------------------------------------


@contextlib.contextmanager
def _gunicorn(*, workers: int, env: dict, log_name: str):
    """gunicorn serving the project on a free loopback port, for the block; yields the port."""
    from bench.sink import free_port

    port = free_port()
    server_log = log_path(log_name).open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "edpotential.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_http(port)
        yield port
    except Exception:
        print(f"gunicorn's last lines:\n{log_tail(log_name)}", file=sys.stderr)
        raise
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        server_log.close()


def _wrk_get(*, port: int, paths: list[str], auth: str, seconds: float, connections: int) -> dict:
    """GETs of `paths` with an Authorization header (wrk_get.lua)."""
    return _wrk_script(
        script="wrk_get.lua",
        port=port,
        lines=paths,
        seconds=seconds,
        connections=connections,
        env={**os.environ, "BENCH_AUTH": auth},
    )


API_LIST_VIEWS = {
    "list": "/api/v1/keys/",
    "list_500": "/api/v1/keys/?page_size=500",
    "floor": "/bench/floor/api/keys/",
    "floor_500": "/bench/floor/api/keys/?page_size=500",
}


def measure_api(ctx: Context) -> dict:
    """Key reads/s through gunicorn beside a trivial authenticated view; the key list beside DRF's stock list."""
    import random

    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from api.models import Scope, ServiceAccount
    from api.services import api_token_issue
    from credentials.models import AuditEvent, CD2Credential

    # No rate limit in the way: the figure is what the server can do.
    account = ServiceAccount.objects.create(name="bench-pipeline", all_institutions=True, rate_per_minute=10**9)
    reader = api_token_issue(account=account, scopes=[Scope.KEYS_READ]).plaintext
    lister = api_token_issue(account=account, scopes=[Scope.KEYS_LIST]).plaintext
    out: dict = {}

    # The list, in this process (as the admin list is measured), median of interleaved rounds.
    client = Client(headers={"Authorization": f"Bearer {lister}"})
    for name, url in API_LIST_VIEWS.items():
        for _ in range(2):
            response = client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url} answered {response.status_code}, not 200")
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
        out[name] = {
            "url": url,
            "queries": len(captured.captured_queries),
            "rows": len(response.json()["results"]),
            "bytes": len(response.content),
        }
    _time_interleaved(client, API_LIST_VIEWS, out, repeats=ctx.repeats)
    out["ratio_list"] = ratio(out["list"]["median_s"], out["floor"]["median_s"])
    out["ratio_list_500"] = ratio(out["list_500"]["median_s"], out["floor_500"]["median_s"])

    # Key reads through gunicorn: a usable active key per request, in turn.
    slugs = list(
        CD2Credential.objects.filter(status=CD2Credential.Status.ACTIVE, expires_on__gte=ctx.today).values_list(
            "institution__slug", flat=True
        )
    )
    random.Random(15).shuffle(slugs)
    slugs = slugs[:2000]
    seconds, rounds, connections = ctx.load_seconds, ctx.load_rounds, ctx.load_connections
    paths = {
        "read": [f"/api/v1/institutions/{slug}/key" for slug in slugs],
        "floor": [f"/bench/floor/api/{slug}/key" for slug in slugs],
        "plain": [f"/bench/floor/plain/{slug}/key" for slug in slugs],
    }
    reads = paths["read"]
    runs = []
    with _gunicorn(workers=ctx.workers, env=dict(os.environ), log_name="gunicorn-api") as port:

        def run(kind: str, warm: bool = False) -> dict:
            before = _count("SELECT count(*) FROM credentials_auditevent WHERE kind = %s", [AuditEvent.Kind.HANDOFF])
            result = _wrk_get(
                port=port,
                paths=paths[kind],
                auth=f"Bearer {reader}",
                seconds=1 if warm else seconds,
                connections=connections,
            )
            after = _count("SELECT count(*) FROM credentials_auditevent WHERE kind = %s", [AuditEvent.Kind.HANDOFF])
            ok = result["requests"] - result["status_errors"]
            result.update(kind=kind, ok=ok, audited=after - before, rps=ok / (result["duration_us"] / 1e6))
            return result

        for kind in ("plain", "floor", "read"):
            run(kind, warm=True)
        for _ in range(rounds):
            for kind in ("plain", "floor", "read"):
                runs.append(run(kind))
    for kind in ("plain", "floor", "read"):
        mine = [r for r in runs if r["kind"] == kind]
        best = max(mine, key=lambda r: r["rps"])
        out[f"{kind}_load"] = {
            "rps": best["rps"],
            "median_latency_ms": best["p50_us"] / 1000,
            "p99_latency_ms": best["p99_us"] / 1000,
            "requests": sum(r["requests"] for r in mine),
            "ok": sum(r["ok"] for r in mine),
            "audited": sum(r["audited"] for r in mine),
            "errors": sum(r["status_errors"] + r["connect_errors"] + r["read_errors"] + r["timeouts"] for r in mine),
        }
    if ctx.profile_dir:
        # Key reads in this process (no gunicorn), for where the time goes; and their queries.
        read_client = Client(headers={"Authorization": f"Bearer {reader}"})
        profile_to(ctx.profile_path("api-key-read"), lambda: [read_client.get(path) for path in reads[:200]])
        with CaptureQueriesContext(connection) as captured:
            read_client.get(reads[0])
        out["read_queries"] = [{"ms": 1000 * float(q["time"]), "sql": q["sql"][:2000]} for q in captured]
    out["workers"], out["connections"], out["seconds"], out["rounds"] = ctx.workers, connections, seconds, rounds
    out["keys_in_rotation"] = len(slugs)
    out["read_ratio"] = ratio(out["read_load"]["rps"], out["floor_load"]["rps"])
    # What authentication (token, scope, rate limit, DRF) costs: the trivial authenticated view beside a plain one.
    out["auth_ratio"] = ratio(out["floor_load"]["rps"], out["plain_load"]["rps"])
    return out


# --------------------------------------------------------------------------
# 7. The Prometheus scrape (/metrics)
# --------------------------------------------------------------------------

METRICS_TOKEN = "bench-metrics-token"  # noqa: S105 (the bench's own)


def measure_metrics(ctx: Context) -> dict:
    """GET /metrics as Prometheus would, beside its floor: one COUNT over the served institutions.

    The floor is the least any scrape of the registry's numbers must do (read
    each institution's stored key summary once); the scrape adds the outbox,
    the jobs and the counters. Its queries must not grow with N.
    """
    from django.conf import settings
    from django.test import Client

    from institutions.models import Institution

    settings.METRICS_TOKEN = METRICS_TOKEN
    client = Client(headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    served = Institution.objects.filter(status__in=Institution.SERVED_STATUSES)

    def floor() -> int:
        return served.count()

    for _ in range(2):  # warm up
        response = client.get("/metrics")
        floor()
    if response.status_code != 200:
        raise RuntimeError(f"GET /metrics answered {response.status_code}, not 200")
    # The bench's own statement counter: Django's CaptureQueriesContext sees nothing here (DEBUG off).
    with QueryCounter().counting() as scrape_queries:
        client.get("/metrics")
    with QueryCounter().counting() as floor_queries:
        floor()
    scrape_times, floor_times = [], []
    for _ in range(ctx.repeats):
        scrape_times.append(timed(client.get, "/metrics")[0])
        floor_times.append(timed(floor)[0])
    scrape_s, floor_s = statistics.median(scrape_times), statistics.median(floor_times)
    return {
        "median_s": scrape_s,
        "queries": scrape_queries.count,
        "bytes": len(response.content),
        "floor_s": floor_s,
        "floor_queries": floor_queries.count,
        "ratio": ratio(scrape_s, floor_s),
    }


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


class Context:
    def __init__(self, args, sink, generated, today) -> None:
        self.args = args
        self.sink = sink
        self.generated = generated
        self.today = today
        quick = self.quick = args.quick
        self.repeats = 3 if quick else 9
        self.load_seconds = 2.0 if quick else 10.0
        self.load_rounds = 1 if quick else 2
        self.workers = args.workers
        self.load_connections = 2 * args.workers
        self.sample_seconds = 6.0 if quick else 60.0
        self.gateway_rate = args.gateway_rate
        self.profile_dir = Path(args.profile_dir) if args.profile_dir else None

    def profile_path(self, name: str) -> Path | None:
        if self.profile_dir is None:
            return None
        return self.profile_dir / f"{name}-{self.generated.institutions}.txt"


MEASURES = {
    "reminders": measure_reminders,
    "admin": measure_admin,
    "submission": measure_submission,
    # Before rotation: the checks decrypt with the keys the gateway knows.
    "key_checks": measure_key_checks,
    # Before rotation too: its gunicorn starts with this process's FERNET_KEYS
    # and refuses to start on values re-encrypted under a newer key.
    "api": measure_api,
    "rotation": measure_rotation,
    "metrics": measure_metrics,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--institutions", type=int, required=True)
    parser.add_argument("--json", required=True, help="Where to write the figures.")
    parser.add_argument("--quick", action="store_true", help="Fewer repeats and shorter load runs (smoke test).")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--gateway-rate", type=float, default=10.0)
    parser.add_argument("--only", nargs="*", choices=sorted(MEASURES), help="Measure only these figures.")
    parser.add_argument("--profile-dir", help="Also write a pyinstrument profile of each figure here.")
    args = parser.parse_args(argv)

    # The sink first: settings read EMAIL_URL when Django starts.
    from bench.sink import SmtpSink

    sink = SmtpSink().start()
    os.environ["EMAIL_URL"] = sink.url
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    from bench.generate import generate

    result: dict = {"institutions": args.institutions, "errors": {}}
    try:
        migrate_s, _ = timed(call_command, "migrate", verbosity=0, interactive=False)
        today = timezone.localdate()
        generated = generate(institutions=args.institutions, today=today)
        result["setup"] = {
            "migrate_s": migrate_s,
            "generate_s": generated.seconds,
            "institutions": generated.institutions,
            "contacts": generated.contacts,
            "credentials": generated.credentials,
            "active_keys": generated.active_keys,
            "reminder_logs": generated.reminder_logs,
        }
        ctx = Context(args, sink, generated, today)
        for name, measure in MEASURES.items():
            if args.only and name not in args.only:
                continue
            started = time.perf_counter()
            try:
                result[name] = measure(ctx)
            except Exception as exc:  # one broken figure must not hide the others
                result["errors"][name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            print(f"  [{args.institutions}] {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    finally:
        sink.stop()
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
