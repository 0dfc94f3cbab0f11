from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from edpotential.startup import encryption_keys_read_stored_values

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edpotential.settings")

application = get_wsgi_application()
# gunicorn runs no system checks: a web process whose FERNET_KEYS cannot read
# the stored keys stops here, before it serves (or stores) anything.
encryption_keys_read_stored_values()
