"""gunicorn's logger, masked the way the app's own logs are.

gunicorn writes the raw request line to its access log, so a submission link
(/k/<token>/) would sit there in clear, as would a Referer holding one. Its
error log carries the URI too: "Error handling request GET /k/<token>/" when a
request fails outside Django, "Invalid request from ip=...: ..." with the line
it could not parse. This logger puts the app's `SecretMaskingFilter` (the one
every handler in settings.LOGGING has) on both of gunicorn's loggers, so each
record is masked before any handler writes it: file, stream, syslog, or one a
`logconfig_dict` adds. gunicorn.conf.py selects it (`logger_class`).
"""

from __future__ import annotations

from gunicorn.glogging import Logger

from edpotential.logging import SecretMaskingFilter


class MaskingLogger(Logger):
    """gunicorn's Logger with secrets and link tokens masked in access and error lines."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        # setup() runs again on every configuration reload (SIGHUP): one filter each.
        for log in (self.error_log, self.access_log):
            if not any(isinstance(f, SecretMaskingFilter) for f in log.filters):
                log.addFilter(SecretMaskingFilter())
