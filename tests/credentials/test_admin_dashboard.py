from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.urls import reverse

from credentials.admin.dashboard import dashboard_context, expiry_chart
from credentials.models import CD2Credential
from credentials.services.keys import credential_create, institution_key_summary_refresh
from credentials.validators import CleanKey
from institutions.models import Institution
from tests.conftest import PASSED_CHECK

pytestmark = pytest.mark.django_db

TODAY = dt.date(2027, 1, 15)


def _key(inst, days, status="active", n=[0]):  # noqa: B006 (a counter shared by calls on purpose)
    n[0] += 1
    key = CleanKey(client_id=f"us-east-1#dash-{n[0]}", secret=f"s-{n[0]}", expires_on=TODAY + dt.timedelta(days=days))
    return credential_create(institution=inst, key=key, source="admin", status=status, check=PASSED_CHECK)


def test_the_chart_counts_active_keys_per_month_for_the_next_twelve_months(make_institution):
    _key(make_institution(), 0)  # 15 Jan 2027
    _key(make_institution(), 16)  # 31 Jan 2027
    _key(make_institution(), 20)  # Feb
    _key(make_institution(), 340)  # Dec 2027, the 12th month
    _key(make_institution(), 360)  # Jan 2028: beyond the chart
    _key(make_institution(), -1)  # expired: not "expiring"
    _key(make_institution(), 40, status="pending_verification")  # not active

    chart = expiry_chart(today=TODAY)

    assert [b.label for b in chart.bars][:2] == ["Jan 2027", "Feb 2027"]
    assert len(chart.bars) == 12
    assert [b.count for b in chart.bars] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    tallest = chart.bars[0]
    assert tallest.height > chart.bars[1].height > 0 == chart.bars[2].height
    assert tallest.y + tallest.height == chart.baseline


def test_the_dashboard_counts_served_institutions_per_key_state(make_institution):
    _key(make_institution(), 200)
    _key(make_institution(), 10)
    _key(make_institution(), -5)
    failing = _key(make_institution(name="Failing U"), 100)
    CD2Credential.objects.filter(pk=failing.pk).update(
        last_verdict="forbidden", last_verification="forbidden (403 AccountDisabled)"
    )
    institution_key_summary_refresh(institution_id=failing.institution_id)  # as every writer of a check does
    make_institution()
    _key(make_institution(status=Institution.Status.OFFBOARDED), 10)  # not served: not counted

    context = dashboard_context(today=TODAY)

    counts = {c["state"]: c["count"] for c in context["counts"]}
    assert counts == {"ok": 1, "expiring": 1, "expired": 1, "failing": 1, "pending": 0, "missing": 1, "lost": 0}
    assert [row.institution.name for row in context["failing"]] == ["Failing U"]
    assert len(context["latest_submissions"]) == 5  # every key, served or not


@time_machine.travel(dt.datetime.combine(TODAY, dt.time(12), tzinfo=dt.UTC))  # the page charts from today: TODAY's
def test_the_admin_index_shows_the_dashboard_as_svg_without_inline_styles_or_scripts(
    client, make_staff, verified_login, make_institution
):
    _key(make_institution(name="Chart College"), 40)
    verified_login(client, make_staff("Viewer"))
    body = client.get(reverse("admin:index")).content.decode()
    assert "<svg" in body and body.count('class="expiry-chart__bar"') == 1
    assert "Chart College" in body  # latest submissions
    dashboard = body[body.index('class="staff-dashboard"') : body.index("app-list") if "app-list" in body else None]
    assert "style=" not in dashboard
    assert "<script" not in dashboard
    assert not re.search(r"https?://(?!127\.0\.0\.1|www\.w3\.org)", dashboard)


def test_staff_without_view_permission_see_no_dashboard(client, make_staff, verified_login):
    verified_login(client, make_staff(None))
    body = client.get(reverse("admin:index")).content.decode()
    assert "staff-dashboard" not in body


def test_the_failing_panel_names_the_failed_key_its_verdict_reason_and_time(
    client, make_staff, verified_login, make_institution
):
    inst = make_institution(name="Maple Ridge")
    key = _key(inst, 100, status="pending_verification")
    checked = dt.datetime(2027, 1, 14, 5, 25, tzinfo=dt.UTC)
    CD2Credential.objects.filter(pk=key.pk).update(
        status="invalid",
        last_verdict="rejected",
        last_verification="401 from CD2: invalid_client",
        last_verified_at=checked,
    )
    institution_key_summary_refresh(institution_id=inst.pk)  # as every writer of a key's status does
    verified_login(client, make_staff("Viewer"))

    body = client.get(reverse("admin:index")).content.decode()

    panel = body[body.index("dash-failing-title") : body.index("dash-latest-title")]
    assert key.hint in panel and "invalid" in panel
    assert "<td>Rejected</td>" in panel
    assert "401 from CD2: invalid_client" in panel
    assert "14 Jan 2027, 05:25" in panel
    assert "newest key invalid" not in panel


def test_each_month_of_the_chart_links_to_the_list_filtered_to_that_month(
    client, make_staff, verified_login, make_institution, today
):
    verified_login(client, make_staff("Viewer"))
    body = client.get(reverse("admin:index")).content.decode()
    changelist = reverse("admin:institutions_institution_changelist")
    assert f'href="{changelist}?expiry={today:%Y-%m}"' in body
    assert f">{today:%b %Y}</text>" in body
