"""How a message is built: one helper for every email (subject, text body and HTML body from templates).

templates/emails/<name>-subject.txt, <name>-body.txt and <name>-body.html
(the HTML extends emails/base.html). The text twin is written by hand, so it
reads well in a plain-text client. Same pattern as healthchecks' hc/lib/emails.py.

A customer mail is written in its institution's language (Institution.language):
the three templates render inside translation.override(language), and the HTML
says which (`<html lang="fr-CA">`). Staff mails pass no language and stay in
English (LANGUAGE_CODE). Every mail comes from REGISTRY_SENDER_NAME (the From
header's name, with DEFAULT_FROM_EMAIL's address) and is signed with it.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterable, Sequence
from email.utils import formataddr, parseaddr

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.utils import translation

from credentials.formatting import html_lang


def from_address() -> str:
    """The From header: REGISTRY_SENDER_NAME with DEFAULT_FROM_EMAIL's address."""
    return formataddr((settings.REGISTRY_SENDER_NAME, parseaddr(settings.DEFAULT_FROM_EMAIL)[1]))


def render_email(name: str, context: dict, *, language: str | None = None) -> tuple[str, str, str]:
    """Subject (one line), text body and HTML body of emails/<name>, in `language` (default: English)."""
    language = language or settings.LANGUAGE_CODE
    context = {
        "site_url": settings.SITE_URL,
        "sender_name": settings.REGISTRY_SENDER_NAME,
        "html_lang": html_lang(language),
        **context,
    }
    with translation.override(language):
        subject = render_to_string(f"emails/{name}-subject.txt", context)
        text = render_to_string(f"emails/{name}-body.txt", context)
        html = render_to_string(f"emails/{name}-body.html", context)
    # A newline in a subject would break the header; templates end in one.
    subject = " ".join(subject.split())
    return subject, text, html


def build_email(
    name: str,
    *,
    to: Sequence[str],
    context: dict,
    cc: Sequence[str] = (),
    reply_to: Sequence[str] = (),
    attachments: Iterable[tuple[str, bytes | str, str]] = (),
    connection=None,
    language: str | None = None,
) -> EmailMultiAlternatives:
    subject, text, html = render_email(name, context, language=language)
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=from_address(),
        to=list(to),
        cc=list(cc),
        reply_to=list(reply_to),
        connection=connection,
    )
    message.attach_alternative(html, "text/html")
    for filename, content, mimetype in attachments:
        message.attach(filename, content, mimetype)
    return message


# Errors worth retrying: the mail server or the network, not our templates.
# (ConnectionError and TimeoutError are OSErrors.)
SEND_ERRORS: tuple[type[Exception], ...] = (smtplib.SMTPException, OSError)


def drop_connection(connection) -> None:
    """Close a shared mail connection after a failed send, so the next send opens a fresh one.

    A server that hung up leaves the backend holding a dead socket; without
    this every later message of the page would fail on it too.
    """
    if connection is None:
        return
    try:
        connection.close()
    except SEND_ERRORS:
        pass  # the SMTP backend forgets the socket even when QUIT fails
