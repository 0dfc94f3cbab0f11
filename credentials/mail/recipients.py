"""Who receives what: one owner rule, one rule for reminders, one for links and conflicts.

An account owner is mailed only while their user is active and has an
address; reminders and "your key stopped working" go to the institution's
contacts who receive reminders, Reply-To the owner (the owner alone when
there are none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.conf import settings

from institutions.models import Contact, Institution, email_key

# --------------------------------------------------------------------------
# Recipients
# --------------------------------------------------------------------------


def unique_addresses(addresses: Iterable[str]) -> list[str]:
    """Addresses stripped, blanks dropped, each once (by institutions.models.email_key), in the order given."""
    seen: dict[str, str] = {}
    for address in addresses:
        address = (address or "").strip()
        if address and email_key(address) not in seen:
            seen[email_key(address)] = address
    return list(seen.values())


def without(addresses: Iterable[str], *, excluded: Iterable[str]) -> list[str]:
    """`addresses` minus those (by email_key) in `excluded`."""
    drop = {email_key(address) for address in excluded}
    return [address for address in unique_addresses(addresses) if email_key(address) not in drop]


def owner_email(institution: Institution) -> str:
    """The account owner's address, or "" when there is none to mail (no owner, deactivated, no address)."""
    owner = institution.account_owner
    if owner is None or not owner.is_active:
        return ""
    return (owner.email or "").strip()


def reply_to(institution: Institution) -> list[str]:
    """Reply-To of customer mail: the account owner, so a customer's question reaches a person."""
    owner = owner_email(institution)
    return [owner] if owner else []


def mail_owner(institution: Institution):
    """The owner to name in a mail's footer, or None when they are not mailed (owner_email's rule)."""
    return institution.account_owner if owner_email(institution) else None


def contact_emails(institution: Institution) -> list[str]:
    """Addresses of the contacts who receive reminders and new links (a prefetched list is used if set)."""
    contacts = getattr(institution, "reminder_contacts", None)
    if contacts is None:
        contacts = Contact.objects.filter(institution=institution, receives_reminders=True).order_by("pk")
    return unique_addresses(contact.email for contact in contacts)


def link_recipients(*, institution: Institution) -> list[str]:
    """Who may receive a new submission link: the contacts on file who receive reminders, and the account owner.

    The one rule for every mail that carries a link. Never an address typed
    into a form: a link is a key to the institution's page, so it goes only
    to people staff put on file.
    """
    return unique_addresses([*contact_emails(institution), owner_email(institution)])


def is_on_file(*, institution: Institution, address: str) -> bool:
    """The address is one link_recipients would mail."""
    key = email_key(address)
    return bool(key) and key in {email_key(a) for a in link_recipients(institution=institution)}


def key_conflict_recipients(*, institutions: Iterable[Institution]) -> list[str]:
    """Who hears of one key handed over for two institutions: each institution's account owner.

    Without an owner to mail, the staff digest's recipients, so a possible
    mix-up never goes unnoticed.
    """
    owners = unique_addresses(owner_email(institution) for institution in institutions)
    return owners or unique_addresses(settings.STAFF_DIGEST_RECIPIENTS)


def reminder_addressees(*, institution: Institution) -> list[str]:
    """Who a reminder or "your key stopped working" goes to: the contacts who receive reminders, else the owner.

    The owner is not copied: they hear of their institutions once a day in
    their summary (services/owners.py) and get the replies (Reply-To).
    [] means nobody can be told.
    """
    to = contact_emails(institution)
    if to:
        return to
    owner = owner_email(institution)
    return [owner] if owner else []


def greeting_name(*, institution: Institution, to: Sequence[str], known: str = "") -> str:
    """Whom a customer mail greets ("Hello Ana Souza,"): the one addressee's name when we know it, else "".

    A mail to several people greets none of them by name (the template falls
    back to a neutral greeting). The name is the contact's as staff typed it,
    else `known` (the name the submitter typed on the page), else the account
    owner's when the owner is the one addressee.
    """
    addresses = unique_addresses(to)
    if len(addresses) != 1:
        return ""
    key = email_key(addresses[0])
    # The contacts the reminder scan prefetched (reminder_contacts) answer most mails without a query.
    prefetched = getattr(institution, "reminder_contacts", None) or []
    for contacts in (prefetched, Contact.objects.filter(institution=institution).order_by("pk")):
        for contact in contacts:
            if email_key(contact.email) == key and contact.name.strip():
                return contact.name.strip()
    if known.strip():
        return known.strip()
    owner = mail_owner(institution)
    if owner is not None and email_key(owner.email) == key:
        return owner.get_full_name().strip()
    return ""
