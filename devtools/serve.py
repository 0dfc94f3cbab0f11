"""`manage.py runserver` for Procfile.dev: stops on SIGTERM as it does on Ctrl-C.

honcho stops its processes with SIGTERM; runserver, left to Python's default,
dies of the signal (exit -15). Here SIGTERM raises KeyboardInterrupt, which
runserver already turns into a clean exit 0.

    python -m devtools.serve 127.0.0.1:8000 --noreload
"""

from __future__ import annotations

import os
import signal
import sys

from django.core.management import execute_from_command_line


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edpotential.settings")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    execute_from_command_line(["manage.py", "runserver", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
