"""Move the wall clock of every Python process to CLOCK_AT, for running the suite on a chosen day.

    PYTHONPATH=tests/clock CLOCK_AT=2028-02-29T12:00:00Z make test   (or: make test-dates)

Python imports `sitecustomize` at start-up from PYTHONPATH, so pytest, its
xdist workers and every process a test starts (gunicorn, Celery workers,
manage.py commands, the fake CD2 gateway) move together. With CLOCK_AT unset
this does nothing.

The first process notes the real time at which the clock read CLOCK_AT
(CLOCK_AT_SINCE) and its children inherit it: a worker started a minute
later reads CLOCK_AT plus a minute, so web server, worker and commands agree
on the moment. The clock keeps ticking (time-machine's tick=True), and only
the wall clock moves: time.monotonic, time.sleep and timeouts stay real
(libfaketime, which moves the monotonic clock too, hangs
threading.Event.wait under Python 3.11).
"""

from __future__ import annotations

import datetime as dt
import os
import time


def _travel() -> None:
    at = os.environ.get("CLOCK_AT")
    if not at:
        return
    instant = dt.datetime.fromisoformat(at)
    if instant.tzinfo is None:
        raise SystemExit(f"CLOCK_AT={at!r} needs a zone, e.g. 2027-01-01T00:30:00Z")
    real_now = time.time()
    since = float(os.environ.setdefault("CLOCK_AT_SINCE", repr(real_now)))
    # A child started in another directory must still find this file.
    here = os.path.dirname(os.path.abspath(__file__))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *filter(None, paths)])

    import time_machine

    time_machine.travel(instant + dt.timedelta(seconds=real_now - since), tick=True).start()
    time.time()  # a travel starts ticking at its first reading: make that now, not whenever the program first asks


_travel()
