"""The staff cockpit has no serious or critical WCAG 2.2 A/AA violation that axe-core finds.

(Django's own admin markup has minor findings we do not own; the customer
pages, test_customer_pages_axe.py, have none at all.)
"""

from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

from tests.conftest import reminder_step

pytestmark = pytest.mark.e2e


def test_the_cockpit_pages_have_no_serious_violation(
    axe, browser, live_server, make_staff, verified_login, institution, make_credential
):
    key = make_credential(institution, days=20)
    reminder_step(key, 30, recipients="ada@northfield.example.edu")
    client = verified_login(Client(), make_staff(None, is_superuser=True))
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies(
        [
            {
                "name": django_settings.SESSION_COOKIE_NAME,
                "value": client.cookies[django_settings.SESSION_COOKIE_NAME].value,
                "url": live_server.url,
            }
        ]
    )
    page = context.new_page()
    pages = {
        "Staff: dashboard": reverse("admin:index"),
        "Staff: institution list": reverse("admin:institutions_institution_changelist"),
        "Staff: institution page": reverse("admin:institutions_institution_change", args=[institution.pk]),
        "Staff: import": reverse("admin:institutions_institution_import"),
        "Staff: reminder list": reverse("admin:credentials_reminderlog_changelist"),
    }
    failures = []
    for name, path in pages.items():
        response = page.goto(live_server.url + path)
        assert response.status == 200, (name, page.url)
        try:
            axe.assert_no_serious(page, name)
        except AssertionError as failure:
            failures.append(str(failure))
    context.close()
    assert failures == []
