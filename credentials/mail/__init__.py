"""Mail in one place: who receives what, the wording, and how a message is built.

- recipients.py: who receives what (the owner rule, reminders, links, conflicts).
- context.py: what the mails share (dates in the institution's zone, "N days", link context, the .ics).
- wording.py: customer messages shown on pages and in mails, from templates/credentials/messages/.
- messages.py: the one helper that renders templates/emails/<name>-* into a message, and the send errors
  worth retrying.

Each kind's sender (services/*) picks its recipients and context from here
and returns the built message to the outbox (credentials.outgoing), which
alone sends it.
"""
