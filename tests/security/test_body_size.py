"""Any body over a limit gets the same 413 page, whatever its size, with no traceback and no ERROR log."""

from __future__ import annotations

import logging

import pytest
from django.test import Client
from django.urls import reverse

from credentials.models import CD2Credential
from credentials.services.links import submission_link_create

SIZES = {"20 KB": 20 * 1024, "70 KB": 70 * 1024, "1 MB": 1024 * 1024}


@pytest.fixture
def urls(institution, isolated_cache):
    return {
        "submit": reverse(
            "credentials:submit", kwargs={"token": submission_link_create(institution=institution).token}
        ),
        "lost link": reverse("credentials:request_link"),
    }


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("page", ["submit", "lost link"])
def test_a_body_over_the_limit_gets_the_too_much_text_page(urls, caplog, page, size):
    caplog.set_level(logging.INFO)
    # A real browser's post: CSRF enforced, with the form's token (the CSRF
    # check is what read big bodies before the view could refuse them).
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    form = client.get(urls[page]).content.decode()
    token = form.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]

    response = client.post(
        urls[page],
        data={"csrfmiddlewaretoken": token, "client_id": "x" * size, "secret": "s", "email": "a@b.example"},
    )

    assert response.status_code == 413
    assert "Too much text" in response.content.decode()
    assert "Content-Security-Policy" in response  # the page keeps the security headers
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not [r for r in caplog.records if r.name == "django.security.RequestDataTooBig"]
    assert not CD2Credential.objects.exists()


def test_a_body_without_a_readable_length_is_refused_the_same_way(urls):
    response = Client().post(urls["submit"], data={"a": "b"}, CONTENT_LENGTH="lots")
    assert response.status_code == 413
    assert "Too much text" in response.content.decode()
