"""The Celery worker for Procfile.dev: stops within honcho's grace period.

honcho sends SIGTERM and kills what is still running 5 seconds later. On the
development filesystem broker a warm shutdown itself takes 4 to 6 seconds,
almost all of it Celery's timer thread finishing its sleep (measured with the
worker idle), so `make run`'s worker was often killed with SIGKILL. Here,
once the warm shutdown has begun, a watchdog ends the process with exit 0
after SHUTDOWN_GRACE_SECONDS: a task still running then is cut short, which in
development only means the filesystem broker hands it out again next start.
Production runs `celery -A edpotential worker` as documented, untouched.

    python -m devtools.worker --loglevel=INFO --pool=threads --concurrency=2
"""

from __future__ import annotations

import os
import sys
import threading
import time

from celery.signals import worker_shutting_down

from edpotential.celery import app  # chooses edpotential.settings unless DJANGO_SETTINGS_MODULE is set

SHUTDOWN_GRACE_SECONDS = 3.0


_shutdown_began = threading.Event()


def _watchdog() -> None:
    """Started before the worker: waits for the shutdown to begin, then gives it SHUTDOWN_GRACE_SECONDS."""
    _shutdown_began.wait()
    time.sleep(SHUTDOWN_GRACE_SECONDS)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _note_shutdown(**kwargs) -> None:
    # Runs inside the signal handler: only set the event; the watchdog does the rest.
    _shutdown_began.set()


def main(argv: list[str]) -> None:
    threading.Thread(target=_watchdog, name="shutdown-watchdog", daemon=True).start()
    worker_shutting_down.connect(_note_shutdown, weak=False)
    app.worker_main(["worker", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
