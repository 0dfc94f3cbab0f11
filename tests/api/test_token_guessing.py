"""Guessing tokens stops: each refused token counts against the address, and past the limit it gets 429s."""

from __future__ import annotations

import datetime as dt

import pytest

from api.authentication import REFUSALS_PER_ADDRESS
from api.models import Scope

pytestmark = pytest.mark.django_db

LIMIT = int(REFUSALS_PER_ADDRESS.split("/")[0])
GUESS = "cd2r_abcdefgh_" + "G" * 43


def get(client, token: str, ip: str):
    return client.get("/api/v1/keys/", headers={"Authorization": f"Bearer {token}"}, REMOTE_ADDR=ip)


def test_past_the_limit_an_address_gets_429s_even_with_a_good_token(client, make_token, held_clock):
    good, _ = make_token([Scope.KEYS_LIST], all_institutions=True)
    statuses = [get(client, f"{GUESS[:-3]}{n:03d}", "203.0.113.9").status_code for n in range(LIMIT + 5)]
    assert statuses == [401] * LIMIT + [429] * 5

    refused = get(client, good, "203.0.113.9")
    assert refused.status_code == 429  # a hit would tell the guesser it guessed right
    assert int(refused["Retry-After"]) > 0
    assert refused["Content-Type"] == "application/problem+json" and refused.json()["status"] == 429
    # Another address is not held back by this one's guesses.
    assert get(client, good, "198.51.100.4").status_code == 200


def test_good_tokens_never_count_and_the_window_ends(client, make_token, held_clock):
    good, _ = make_token([Scope.KEYS_LIST], all_institutions=True)
    for _ in range(LIMIT * 2):
        assert get(client, good, "203.0.113.9").status_code == 200
    for _ in range(LIMIT):
        assert get(client, GUESS, "203.0.113.9").status_code == 401
    assert get(client, good, "203.0.113.9").status_code == 429
    held_clock.shift(dt.timedelta(minutes=11))  # past the 10-minute window
    assert get(client, good, "203.0.113.9").status_code == 200
