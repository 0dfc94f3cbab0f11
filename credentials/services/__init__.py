"""Business rules, one module per area. Views, admin, commands and tasks are thin doors into these.

audit         the append-only audit log
keys          storing a key, activating it, recording a check, ending it
links         single-use submission links: make, look up, mail, revoke, "lost the link?"
submission    a key handed over (by a customer's link or by staff): validate, check live, store
verification  daily re-checks of active keys
reminders     expiry reminders, exactly once per step
staff         revoke, reveal, hand-off and export (audited)
digest        the weekly staff digest
rotation      re-encrypting stored values under a new Fernet key
jobs          queueing Celery tasks by name after commit
"""
