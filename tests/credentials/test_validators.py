from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError

from credentials.validators import validate_key_input

TODAY = dt.date(2026, 11, 26)
GOOD_ID = "us-east-1#0a1b2c3d-4e5f-6789-abcd-ef0123456789"
GOOD_SECRET = "Zx9-ab_cd.EF/gh+ij=="
GOOD_DATE = dt.date(2027, 11, 26)


def errors_for(**overrides) -> dict[str, list[str]]:
    values = {"client_id": GOOD_ID, "secret": GOOD_SECRET, "expires_on": GOOD_DATE, **overrides}
    with pytest.raises(ValidationError) as excinfo:
        validate_key_input(today=TODAY, **values)
    return excinfo.value.message_dict


def test_good_values_are_stripped_and_accepted():
    key = validate_key_input(
        client_id=f"  {GOOD_ID}\n", secret=f"\t{GOOD_SECRET} ", expires_on="2027-11-26", today=TODAY
    )
    assert (key.client_id, key.secret, key.expires_on) == (GOOD_ID, GOOD_SECRET, GOOD_DATE)
    assert key.region == "us-east-1"
    assert key.hint == "us-east-1 …6789"
    assert GOOD_SECRET not in repr(key)


@pytest.mark.parametrize("region", ["us-west-2", "eu-west-1", "ap-southeast-2", "ca-central-1", "mx-central-9"])
def test_any_region_is_accepted(region):
    assert (
        validate_key_input(client_id=f"{region}#abc-123", secret=GOOD_SECRET, expires_on=GOOD_DATE, today=TODAY).region
        == region
    )


@pytest.mark.parametrize("value", ["", "   ", None])
def test_an_empty_client_id_asks_for_it(value):
    assert errors_for(client_id=value)["client_id"] == [
        "Enter the Client ID. It is shown with the Secret in the “Reveal OAuth Credentials” window at "
        "identity.instructure.com."
    ]


@pytest.mark.parametrize(
    "value",
    ["0a1b2c3d-4e5f", "us-east-1#", "#abc", "us east 1#abc", "us-east-1#abc#def", "us-east-1#ab c", "ús-east-1#abc"],
)
def test_a_malformed_client_id_shows_what_one_looks_like(value):
    (message,) = errors_for(client_id=value)["client_id"]
    assert message.startswith("This is not a Canvas Data 2 Client ID.")
    assert "us-east-1#0a1b2c3d-4e5f-6789-abcd-ef0123456789" in message


@pytest.mark.parametrize("value", ["", "  ", None])
def test_an_empty_secret_asks_for_it(value):
    assert errors_for(secret=value)["secret"][0].startswith("Enter the Secret.")


@pytest.mark.parametrize("value", ["abc def", "abc\ndef", "abc\tdef", "abc\u00a0def"])
def test_whitespace_inside_the_secret_asks_to_copy_it_again(value):
    (message,) = errors_for(secret=value)["secret"]
    assert message.startswith("The Secret contains a space or a line break.")
    assert value not in message


@pytest.mark.parametrize("value", ["sécret", "abc\x00def", "x" * 1001])
def test_a_secret_with_impossible_characters_or_length_is_refused(value):
    assert errors_for(secret=value)["secret"][0].startswith("This is not a Canvas Data 2 Secret")


def test_the_client_id_pasted_as_secret_is_caught():
    assert errors_for(secret=GOOD_ID)["secret"][0].startswith("The Secret is the same as the Client ID.")


@pytest.mark.parametrize("value", [TODAY, TODAY - dt.timedelta(days=1), "2020-01-01"])
def test_an_expiry_date_not_in_the_future_is_refused(value):
    assert errors_for(expires_on=value)["expires_on"][0].startswith("This expiry date is not in the future")


def test_an_expiry_date_more_than_three_years_ahead_is_refused():
    assert errors_for(expires_on=TODAY + dt.timedelta(days=3 * 365 + 8))["expires_on"][0].startswith(
        "Instructure keys last at most 3 years"
    )
    # Three years and a few days is still fine (time zones, a key made days ago).
    validate_key_input(
        client_id=GOOD_ID, secret=GOOD_SECRET, expires_on=TODAY + dt.timedelta(days=3 * 365 + 5), today=TODAY
    )


@pytest.mark.parametrize("value", ["", None])
def test_a_missing_expiry_date_asks_for_it(value):
    assert errors_for(expires_on=value)["expires_on"][0].startswith("Enter the key's expiry date")


def test_a_date_that_is_not_a_date_says_the_format():
    assert errors_for(expires_on="26/11/2027")["expires_on"] == [
        "Enter the expiry date as a date, for example 2027-11-26."
    ]


def test_every_problem_is_reported_at_once():
    assert set(errors_for(client_id="", secret="a b", expires_on="")) == {"client_id", "secret", "expires_on"}
