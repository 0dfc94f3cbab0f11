"""gunicorn in production: `gunicorn -c gunicorn.conf.py` (docs/RUNBOOK.md, "Web").

Values that must agree with the app come from the app's own settings (the
same environment variables, read once, by edpotential/settings.py), never a
second parse: whom to trust for X-Forwarded-Proto, how long a request may
take, the log level. Command-line flags still win over this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
# The file is read before gunicorn changes into `chdir` and puts it on the
# path; both are this checkout wherever gunicorn is started from.
sys.path.insert(0, str(BASE_DIR))
chdir = str(BASE_DIR)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edpotential.settings")
# The workers' request numbers add up in one folder (prometheus-client's
# multiprocess mode, requestinfo/metrics.py): set before anything imports
# prometheus_client, which reads it once. Emptied when gunicorn starts (on_starting).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.environ.get("VAR_DIR", str(BASE_DIR / "var")) + "/prometheus")

from django.conf import settings  # noqa: E402  (needs DJANGO_SETTINGS_MODULE first)

wsgi_app = "edpotential.wsgi:application"

# Loopback by default: the reverse proxy that terminates TLS runs on this
# host. A proxy elsewhere: GUNICORN_BIND=10.0.0.5:8000, reachable by it only.
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",")
# Sync workers, as benchmarked (bench/RESULTS.md). A submission holds its
# worker while CD2 checks the key (seconds), so allow more workers than cores.
workers = int(os.environ.get("WEB_CONCURRENCY", "3"))
worker_class = "sync"

# The slowest request checks a key live against CD2 (a submission, the
# admin's "check now"): two calls, each up to connect + read timeout. A worker
# is killed only after that, plus a margin for the database and the mail.
timeout = int(2 * (settings.CD2_CONNECT_TIMEOUT + settings.CD2_READ_TIMEOUT)) + 15
# A deploy (SIGTERM, SIGHUP) lets such a request finish rather than cut it.
graceful_timeout = timeout
keepalive = 5  # behind a proxy that reuses its upstream connections

# X-Forwarded-Proto is believed exactly when the app believes it
# (BEHIND_TRUSTED_PROXY, which also sets SECURE_PROXY_SSL_HEADER). gunicorn's
# default would believe it from 127.0.0.1 whatever the app says, so a process
# on this host could make plain HTTP look like HTTPS.
if settings.BEHIND_TRUSTED_PROXY:
    # The app trusts whoever reaches it, on the promise that only the proxy
    # can (bind above); FORWARDED_ALLOW_IPS (gunicorn's variable) narrows it.
    forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "*")
else:
    forwarded_allow_ips = ""
# Only the header the app reads; the proxy overwrites it. No other header may
# rewrite the WSGI environment (the app is served at /, unprefixed).
secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
forwarder_headers = ""

# Access and error logs go to stdout and stderr for the process manager
# (journald, docker) unless given files; both are masked like the app's logs:
# /k/<token>/ becomes /k/[masked]/ (edpotential/gunicorn_logging.py).
logger_class = "edpotential.gunicorn_logging.MaskingLogger"
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-")
errorlog = os.environ.get("GUNICORN_ERROR_LOG", "-")
loglevel = settings.LOG_LEVEL.lower()
# Apache's combined format, the request time in milliseconds, and the
# X-Forwarded-For the proxy passed on (%(h)s is the proxy's address behind one).
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms "%({x-forwarded-for}i)s"'
proc_name = "cd2-registry-web"
# The process manager sends the signals (docs/RUNBOOK.md); gunicorn's control
# socket (one path per user, ~/.gunicorn/gunicorn.ctl) would only be shared by
# every gunicorn that user runs.
control_socket_disable = True


def on_starting(server) -> None:
    """An empty multiprocess folder per gunicorn start: the last run's workers' numbers are not this run's."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()


def child_exit(server, worker) -> None:
    """A worker gone (killed, recycled): its counts stay in the folder, added up with the living ones'."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
