"""The customer's wording, one template per message: templates/credentials/messages/<name>.txt.

What a door says to the person handing a key over (refused, already on
file, what happens next to a pending key) is written in templates beside
the pages and mails that show it, not in the services that decide it.

Each template turns autoescaping off: a message carries its values (an
institution's name) as typed, and whatever shows it escapes it then (the
page, the HTML mail), as it did the Python strings these templates replace.
The result is a plain str, never a SafeString, so nothing is shown unescaped.

A template's lines make one paragraph: its non-blank lines are joined with
one space, so a long sentence can wrap in the template and tags can stand on
lines of their own, while a value's own spaces stay as the customer typed them
(splitting on every run of whitespace, as subjects are, would squeeze them).
"""

from __future__ import annotations

from django.template.loader import render_to_string


def customer_message(name: str, **context) -> str:
    """The text of credentials/messages/<name>.txt rendered with context, as one line."""
    text = render_to_string(f"credentials/messages/{name}.txt", context)
    return str(" ".join(line for line in text.splitlines() if line.strip()))
