"""edpotential/celery.py: a real worker logs through the app's masking handlers, not Celery's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "kQwErTyUiOpAsDfGhJkLzXcVbNm-_qWeRtYuIoPaSdF"

# Starts a worker as `celery -A edpotential worker` does; once it is ready,
# logs a line holding a secret and a link token from app code, and exits.
WORKER = f"""
import logging, os
from celery.signals import worker_ready
from edpotential.celery import app

@worker_ready.connect
def probe(**kwargs):
    logging.getLogger("credentials.probe").warning("probe secret=hunter2-Zx9 /k/{TOKEN}/ end")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(0)

app.worker_main(["worker", "--pool=solo", "--loglevel=INFO", "--without-heartbeat", "--without-mingle",
                 "--without-gossip"])
"""


@pytest.mark.e2e
def test_a_worker_masks_secrets_and_link_tokens_in_its_logs(tmp_path):
    # The embedded broker (a folder): no Redis needed for a worker to start.
    env = {**os.environ, "VAR_DIR": str(tmp_path), "CELERY_BROKER_URL": "filesystem://"}
    run = subprocess.run(
        [sys.executable, "-c", WORKER], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    output = run.stdout + run.stderr
    assert "probe secret=[masked] /k/[masked]/ end" in output, output[-3000:]
    assert "hunter2-Zx9" not in output and TOKEN not in output
