"""A cursor the key list never gave out is a 400 problem, never a 500."""

from __future__ import annotations

import base64

import pytest

from api.models import Scope

pytestmark = pytest.mark.django_db


def _cursor(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        _cursor("p=not-a-moment"),
        _cursor("p=2026-13-45 99:00:00"),
        _cursor("p=\x00"),
        _cursor("o=99999999999999999999&p=x"),
        _cursor("r=notanumber"),
    ],
)
def test_a_cursor_the_list_never_gave_out_is_a_400_problem(make_token, api, cursor):
    plaintext, _ = make_token([Scope.KEYS_LIST], all_institutions=True)
    response = api(plaintext).get("/api/v1/keys/", cursor=cursor)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_cursor"


def test_a_cursor_the_list_gave_out_still_pages(make_token, api, make_institution, make_credential):
    for _ in range(3):
        make_credential(make_institution())
    plaintext, _ = make_token([Scope.KEYS_LIST], all_institutions=True)
    first = api(plaintext).get("/api/v1/keys/", page_size=2).json()
    following = api(plaintext).get(first["next"])
    assert following.status_code == 200 and len(following.json()["results"]) == 1
