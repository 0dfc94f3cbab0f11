"""The customer's wording lives in templates; every message reads exactly as it did as Python strings.

The expected texts are the old constants' output, frozen here as literals for
every key of the old dicts (every status, pending reason, 403 error type,
door, with and without a Canvas domain), so a template edit that changes a
customer's words, spacing or punctuation fails here first.
"""

from __future__ import annotations

import pytest
from django.utils.safestring import SafeData

from credentials.models import CD2Credential
from credentials.services import pending, submission
from institutions.models import Institution

# Characters HTML would escape: the messages must carry them raw (the page
# and the HTML mail escape them when they show the message).
NAME = "Lakeside <College> & “Sons” 'Q'"
HINT = "us-east-1 …a1b2"
# Spaces inside and around a name are the customer's: kept as typed.
SPACED = "  Lakeside   College  "

CASES = [
    (
        ("rejected",),
        (
            "Instructure did not accept this Client ID and Secret. Check that you copied the whole Client ID "
            "(including the part before the # sign) and the whole Secret, then paste the Secret again and "
            "resubmit. Nothing was saved, and this link still works."
        ),
    ),
    (
        ("recheck_rejected",),
        (
            "Instructure did not accept this Client ID and Secret. Most likely part of one was not copied, or"
            " the key has been deleted since."
        ),
    ),
    (
        ("forbidden_reason", "AccountNotOnboarded"),
        ("your institution's Canvas account is not yet set up for Canvas Data 2"),
    ),
    (
        ("forbidden_reason", "AccountDisabled"),
        ("Canvas Data 2 access is turned off for your institution's Canvas account"),
    ),
    (
        ("forbidden_reason", "RequestTypeForbidden"),
        ("Canvas Data 2 does not allow this kind of access for your institution's account"),
    ),
    (
        ("forbidden_reason", None),
        ("Canvas Data 2 is not enabled for your account"),
    ),
    (
        ("forbidden_reason", "Other"),
        ("Canvas Data 2 is not enabled for your account"),
    ),
    (
        ("pending_next_steps", "not_enabled", "lakeside.instructure.com", "AccountNotOnboarded"),
        (
            "Instructure recognised the key, but your institution's Canvas account is not yet set up for "
            "Canvas Data 2. What to do: ask your Instructure Customer Success Manager (or Instructure "
            "support) to enable Canvas Data 2 for lakeside.instructure.com. You do not need a new key: we "
            "have stored this one and check it again every day for 30 days, and email you as soon as it "
            "works."
        ),
    ),
    (
        ("pending_next_steps", "not_enabled", "lakeside.instructure.com", "AccountDisabled"),
        (
            "Instructure recognised the key, but Canvas Data 2 access is turned off for your institution's "
            "Canvas account. What to do: ask your Instructure Customer Success Manager (or Instructure "
            "support) to enable Canvas Data 2 for lakeside.instructure.com. You do not need a new key: we "
            "have stored this one and check it again every day for 30 days, and email you as soon as it "
            "works."
        ),
    ),
    (
        ("pending_next_steps", "not_enabled", "lakeside.instructure.com", "RequestTypeForbidden"),
        (
            "Instructure recognised the key, but Canvas Data 2 does not allow this kind of access for your "
            "institution's account. What to do: ask your Instructure Customer Success Manager (or Instructure"
            " support) to enable Canvas Data 2 for lakeside.instructure.com. You do not need a new key: we "
            "have stored this one and check it again every day for 30 days, and email you as soon as it "
            "works."
        ),
    ),
    (
        ("pending_next_steps", "not_enabled", "lakeside.instructure.com", None),
        (
            "Instructure recognised the key, but Canvas Data 2 is not enabled for your account. What to do: "
            "ask your Instructure Customer Success Manager (or Instructure support) to enable Canvas Data 2 "
            "for lakeside.instructure.com. You do not need a new key: we have stored this one and check it "
            "again every day for 30 days, and email you as soon as it works."
        ),
    ),
    (
        ("pending_next_steps", "not_enabled", "", "AccountNotOnboarded"),
        (
            "Instructure recognised the key, but your institution's Canvas account is not yet set up for "
            "Canvas Data 2. What to do: ask your Instructure Customer Success Manager (or Instructure "
            "support) to enable Canvas Data 2 for your Canvas account. You do not need a new key: we have "
            "stored this one and check it again every day for 30 days, and email you as soon as it works."
        ),
    ),
    (
        ("pending_next_steps", "not_enabled", "", "AccountDisabled"),
        (
            "Instructure recognised the key, but Canvas Data 2 access is turned off for your institution's "
            "Canvas account. What to do: ask your Instructure Customer Success Manager (or Instructure "
            "support) to enable Canvas Data 2 for your Canvas account. You do not need a new key: we have "
            "stored this one and check it again every day for 30 days, and email you as soon as it works."
        ),
    ),
    (
        ("pending_next_steps", "not_enabled", "", "RequestTypeForbidden"),
        (
            "Instructure recognised the key, but Canvas Data 2 does not allow this kind of access for your "
            "institution's account. What to do: ask your Instructure Customer Success Manager (or Instructure"
            " support) to enable Canvas Data 2 for your Canvas account. You do not need a new key: we have "
            "stored this one and check it again every day for 30 days, and email you as soon as it works."
        ),
    ),
    (
        ("pending_next_steps", "not_enabled", "", None),
        (
            "Instructure recognised the key, but Canvas Data 2 is not enabled for your account. What to do: "
            "ask your Instructure Customer Success Manager (or Instructure support) to enable Canvas Data 2 "
            "for your Canvas account. You do not need a new key: we have stored this one and check it again "
            "every day for 30 days, and email you as soon as it works."
        ),
    ),
    (
        ("pending_next_steps", "maintenance", "lakeside.instructure.com", None),
        (
            "Instructure recognised the key, but your institution's account is under maintenance at "
            "Instructure, so it cannot be checked yet. There is nothing you need to do and no new key is "
            "needed: we have stored this one, check it again automatically, and email you if it does not "
            "work."
        ),
    ),
    (
        ("pending_next_steps", "maintenance", "", None),
        (
            "Instructure recognised the key, but your institution's account is under maintenance at "
            "Instructure, so it cannot be checked yet. There is nothing you need to do and no new key is "
            "needed: we have stored this one, check it again automatically, and email you if it does not "
            "work."
        ),
    ),
    (
        ("pending_next_steps", "unavailable", "lakeside.instructure.com", None),
        (
            "Instructure's service did not answer just now, so we could not check the key yet. There is "
            "nothing you need to do and no new key is needed: we have stored it, check it again automatically"
            " over the next hours, and email you if it does not work."
        ),
    ),
    (
        ("pending_next_steps", "unavailable", "", None),
        (
            "Instructure's service did not answer just now, so we could not check the key yet. There is "
            "nothing you need to do and no new key is needed: we have stored it, check it again automatically"
            " over the next hours, and email you if it does not work."
        ),
    ),
    (
        ("pending_next_steps", "", "lakeside.instructure.com", None),
        (
            "Instructure's service did not answer just now, so we could not check the key yet. There is "
            "nothing you need to do and no new key is needed: we have stored it, check it again automatically"
            " over the next hours, and email you if it does not work."
        ),
    ),
    (
        ("pending_next_steps", "", "", None),
        (
            "Instructure's service did not answer just now, so we could not check the key yet. There is "
            "nothing you need to do and no new key is needed: we have stored it, check it again automatically"
            " over the next hours, and email you if it does not work."
        ),
    ),
    (
        ("already_have", "active", True),
        (
            "We already have this key for Lakeside <College> & “Sons” 'Q' (key us-east-1 …a1b2), and it is "
            "the key we use. Nothing changed, and there is nothing more to do. If you meant to send a new "
            "key, create one at identity.instructure.com and submit that one with this link."
        ),
    ),
    (
        ("already_have", "active", False),
        (
            "We already have this key for Lakeside <College> & “Sons” 'Q' (key us-east-1 …a1b2), and it is "
            "the key we use. Nothing changed, and there is nothing more to do. If you meant to send a new "
            "key, create one at identity.instructure.com and submit that one with this link."
        ),
    ),
    (
        ("already_have", "pending_verification", True),
        (
            "We already have this key for Lakeside <College> & “Sons” 'Q' (key us-east-1 …a1b2); it is "
            "waiting for its check with Instructure. Nothing changed, and you need not send it again: we "
            "email you when the check is done."
        ),
    ),
    (
        ("already_have", "pending_verification", False),
        (
            "We already have this key for Lakeside <College> & “Sons” 'Q' (key us-east-1 …a1b2); it is "
            "waiting for its check with Instructure. Nothing changed, and you need not send it again: we "
            "email you when the check is done."
        ),
    ),
    (
        ("already_have", "superseded", True),
        (
            "We had this key for Lakeside <College> & “Sons” 'Q' before (key us-east-1 …a1b2) and no longer "
            "use it: a newer key replaced it. Nothing changed. Please create a new key at "
            "identity.instructure.com and submit that one with this link, which still works."
        ),
    ),
    (
        ("already_have", "superseded", False),
        (
            "We had this key for Lakeside <College> & “Sons” 'Q' before (key us-east-1 …a1b2) and no longer "
            "use it: a newer key replaced it. Nothing changed. Please create a new key at "
            "identity.instructure.com and enter that one here."
        ),
    ),
    (
        ("already_have", "revoked", True),
        (
            "We had this key for Lakeside <College> & “Sons” 'Q' before (key us-east-1 …a1b2) and no longer "
            "use it: this key was revoked, so it no longer works. Nothing changed. Please create a new key at"
            " identity.instructure.com and submit that one with this link, which still works."
        ),
    ),
    (
        ("already_have", "revoked", False),
        (
            "We had this key for Lakeside <College> & “Sons” 'Q' before (key us-east-1 …a1b2) and no longer "
            "use it: this key was revoked, so it no longer works. Nothing changed. Please create a new key at"
            " identity.instructure.com and enter that one here."
        ),
    ),
    (
        ("already_have", "invalid", True),
        (
            "We had this key for Lakeside <College> & “Sons” 'Q' before (key us-east-1 …a1b2) and no longer "
            "use it: this key stopped working: Instructure no longer accepts it. Nothing changed. Please "
            "create a new key at identity.instructure.com and submit that one with this link, which still "
            "works."
        ),
    ),
    (
        ("already_have", "invalid", False),
        (
            "We had this key for Lakeside <College> & “Sons” 'Q' before (key us-east-1 …a1b2) and no longer "
            "use it: this key stopped working: Instructure no longer accepts it. Nothing changed. Please "
            "create a new key at identity.instructure.com and enter that one here."
        ),
    ),
    (
        ("taken", "lakeside.instructure.com"),
        (
            "This key is already on file with us for another institution, so we cannot accept it for Lakeside"
            " <College> & “Sons” 'Q': a Canvas Data 2 key belongs to one institution. Nothing was saved, and "
            "this link still works. Please create a new key at identity.instructure.com, signed in to the "
            "Canvas of Lakeside <College> & “Sons” 'Q' (lakeside.instructure.com), name it “EdPotential – "
            "Lakeside <College> & “Sons” 'Q'”, and submit that one here. We have told your EdPotential "
            "account team, in case keys were mixed up."
        ),
    ),
    (
        ("taken", ""),
        (
            "This key is already on file with us for another institution, so we cannot accept it for Lakeside"
            " <College> & “Sons” 'Q': a Canvas Data 2 key belongs to one institution. Nothing was saved, and "
            "this link still works. Please create a new key at identity.instructure.com, signed in to the "
            "Canvas of Lakeside <College> & “Sons” 'Q' (your Canvas), name it “EdPotential – Lakeside "
            "<College> & “Sons” 'Q'”, and submit that one here. We have told your EdPotential account team, "
            "in case keys were mixed up."
        ),
    ),
    (
        ("taken", "lakeside.instructure.com", SPACED),
        (
            "This key is already on file with us for another institution, so we cannot accept it for   "
            "Lakeside   College  : a Canvas Data 2 key belongs to one institution. Nothing was saved, and "
            "this link still works. Please create a new key at identity.instructure.com, signed in to the "
            "Canvas of   Lakeside   College   (lakeside.instructure.com), name it “EdPotential –   Lakeside"
            "   College  ”, and submit that one here. We have told your EdPotential account team, in case "
            "keys were mixed up."
        ),
    ),
]


def _institution(domain: str) -> Institution:
    return Institution(pk=1, name=NAME, canvas_domain=domain)


def _message(case: tuple) -> str:
    kind, *args = case
    if kind == "rejected":
        return submission.rejected_message()
    if kind == "recheck_rejected":
        return pending.recheck_rejected_message()
    if kind == "forbidden_reason":
        return submission.forbidden_reason(args[0])
    if kind == "pending_next_steps":
        reason, domain, error_type = args
        credential = CD2Credential(pending_reason=reason, hint=HINT)
        credential.institution = _institution(domain)
        return submission.pending_next_steps(credential, error_type=error_type)
    if kind == "already_have":
        status, by_link = args
        existing = CD2Credential(status=status, hint=HINT)
        return submission.already_have_message(
            existing=existing, institution=_institution("x.instructure.com"), by_link=by_link
        )
    if kind == "taken":
        domain, *name = args
        institution = _institution(domain)
        institution.name = name[0] if name else NAME
        return submission.taken_message(institution=institution)
    raise AssertionError(f"unknown case {kind}")


@pytest.fixture(autouse=True)
def _key_name(settings):
    settings.CD2_KEY_NAME = "EdPotential"


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[" ".join(map(str, case)) for case, _ in CASES])
def test_each_message_reads_word_for_word_as_before(case, expected):
    assert _message(case) == expected


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[" ".join(map(str, case)) for case, _ in CASES])
def test_each_message_is_plain_text_that_the_page_escapes(case, expected):
    # A SafeString would reach the page unescaped: the institution's name
    # could then write HTML into the customer's page.
    assert not isinstance(_message(case), SafeData)


def test_every_status_and_pending_reason_has_a_case():
    statuses = {case[1] for case, _ in CASES if case[0] == "already_have"}
    reasons = {case[1] for case, _ in CASES if case[0] == "pending_next_steps"}
    # A lost key's blind index is wiped with its values (mark_keys_lost): it is never found on file.
    assert statuses == set(CD2Credential.Status.values) - {CD2Credential.Status.LOST}
    assert reasons >= set(submission.PendingReason.values)
