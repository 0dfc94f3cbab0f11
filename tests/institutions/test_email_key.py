"""One normalisation of addresses (NFKC, then case folding) for the rate limit, the lookup and de-duplication."""

from __future__ import annotations

import unicodedata

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from credentials.services import outbox
from credentials.services.links import link_request_record
from credentials.views import _email_key
from institutions.models import Contact, email_for_storage, email_key

LOCAL = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20)


@given(LOCAL)
def test_the_key_is_stable_under_its_own_normalisation_and_under_case(local):
    address = f"{local}@school.example.edu"
    key = email_key(address)
    assert email_key(key) == key
    assert email_key(address.upper()) == email_key(address.lower()) == email_key(address.casefold()) or (
        # Some letters change under upper() into more than one (ß -> SS): still one key after casefolding.
        email_key(address.upper()).casefold() == email_key(address.upper())
    )
    assert email_key(unicodedata.normalize("NFKD", address)) == key


@given(st.sampled_from(["K", "ſ", "Ａ", "ｌ"]), st.sampled_from(["k", "s", "a", "l"]))
def test_compatibility_and_case_look_alikes_share_a_key(odd, plain):
    if email_key(odd) == plain:
        assert email_key(f"a{odd}ice@x.example") == email_key(f"a{plain}ice@x.example")


def test_a_dotless_i_is_a_different_address_not_a_way_round_the_limit():
    assert email_key("alıce@x.example") != email_key("alice@x.example")
    assert email_key("ALICE@X.EXAMPLE") == email_key("alice@x.example")
    assert email_for_storage(" Ａda@X.example ") == "Ada@X.example"


class Post:
    POST: dict

    def __init__(self, email):
        self.POST = {"email": email}


def test_the_rate_limit_key_is_the_lookup_key():
    assert _email_key("g", Post("ALICE@x.example")) == _email_key("g", Post("alice@x.example"))
    assert _email_key("g", Post("aliſe@x.example")) == _email_key("g", Post("alise@x.example"))
    assert _email_key("g", Post("alıce@x.example")) != _email_key("g", Post("alice@x.example"))


@pytest.mark.parametrize(
    ("typed", "mailed"),
    [("alice@school.example.edu", True), ("ALICE@School.Example.EDU", True), ("alıce@school.example.edu", False)],
)
def test_the_lookup_mails_only_an_address_with_the_contacts_key(institution, typed, mailed):
    Contact.objects.create(institution=institution, name="Alice", email="alice@school.example.edu")
    link_request_record(email=typed, ip_address=None)
    outbox.outbox_deliver_due()  # the request, then the link it wrote
    outbox.outbox_deliver_due()
    assert [m.to for m in mail.outbox] == ([["alice@school.example.edu"]] if mailed else [])


@pytest.mark.usefixtures("held_clock")
def test_look_alike_spellings_share_one_per_address_limit(institution, isolated_cache, celery_messages):
    client = Client()
    url = reverse("credentials:request_link")
    spellings = ["alice@x.example", "ALICE@x.example", "Alice@X.example", "alice@x.example"]
    statuses = [client.post(url, {"email": e}, REMOTE_ADDR=f"10.0.0.{n}").status_code for n, e in enumerate(spellings)]
    assert statuses == [302, 302, 302, 429]
