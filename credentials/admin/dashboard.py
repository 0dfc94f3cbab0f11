"""The admin index dashboard: keys per state, expiries per month, latest submissions, failing checks.

Everything is counted in SQL (selectors); nothing here reads an encrypted column.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Count
from django.db.models.functions import TruncMonth
from django.utils import timezone

from credentials.formatting import format_month
from credentials.models import VERDICT_LABELS, CD2Credential, Notice
from credentials.selectors import institutions_with_key_status, institutions_without_working_key, local_today
from credentials.services.health import jobs_status
from institutions.models import Institution, KeyState


@dataclass(frozen=True)
class Bar:
    label: str
    count: int
    x: int
    y: int
    width: int
    height: int
    label_x: int
    month: dt.date

    @property
    def filter_value(self) -> str:
        """The institution list's expiry filter for this month (ExpiryFilter.MONTH_FORMAT)."""
        return f"{self.month:%Y-%m}"


@dataclass(frozen=True)
class FailingCheck:
    """A failing institution and the check that failed: which key, the verdict, its reason and when."""

    institution: Institution
    key: CD2Credential | None

    @property
    def verdict(self) -> str:
        return VERDICT_LABELS.get(self.key.last_verdict, "") if self.key else ""


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    baseline: int
    bars: list[Bar]
    max_count: int
    total: int


CHART_WIDTH = 720
CHART_HEIGHT = 220
_TOP = 24
_BOTTOM = 36
_SIDE = 12


def _month_starts(today: dt.date, months: int) -> list[dt.date]:
    first = today.replace(day=1)
    out = []
    for i in range(months):
        year, month = divmod(first.month - 1 + i, 12)
        out.append(dt.date(first.year + year, month + 1, 1))
    return out


def expiry_chart(*, today: dt.date | None = None, months: int = 12) -> Chart:
    """Active keys expiring per calendar month, this month and the next months-1, as bar geometry for an SVG."""
    today = today or local_today()
    starts = _month_starts(today, months + 1)
    counts = dict(
        CD2Credential.objects.active()
        .filter(expires_on__gte=today, expires_on__lt=starts[-1])
        .annotate(month=TruncMonth("expires_on"))
        .values_list("month")
        .annotate(n=Count("pk"))
        .values_list("month", "n")
    )
    # TruncMonth gives a date on every backend for a DateField.
    counts = {(m.date() if isinstance(m, dt.datetime) else m): n for m, n in counts.items()}
    max_count = max(counts.values(), default=0)
    plot_height = CHART_HEIGHT - _TOP - _BOTTOM
    slot = (CHART_WIDTH - 2 * _SIDE) // months
    bar_width = int(slot * 0.7)
    bars = []
    for i, month in enumerate(starts[:-1]):
        count = counts.get(month, 0)
        height = round(plot_height * count / max_count) if max_count else 0
        x = _SIDE + i * slot + (slot - bar_width) // 2
        bars.append(
            Bar(
                label=format_month(month),
                count=count,
                x=x,
                y=_TOP + plot_height - height,
                width=bar_width,
                height=height,
                label_x=x + bar_width // 2,
                month=month,
            )
        )
    return Chart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        baseline=_TOP + plot_height,
        bars=bars,
        max_count=max_count,
        total=sum(b.count for b in bars),
    )


def _failed_keys(institutions: list[Institution]) -> list[CD2Credential | None]:
    """The key whose check failed, per institution: the active key, else the newest that is not history."""
    keys = (
        CD2Credential.objects.without_secrets()
        .filter(institution__in=[inst.pk for inst in institutions])
        .exclude(status=CD2Credential.Status.SUPERSEDED)
        .order_by("-submitted_at", "-pk")
    )
    chosen: dict[int, CD2Credential] = {}
    for key in keys:
        current = chosen.get(key.institution_id)
        if current is None or (key.status == CD2Credential.Status.ACTIVE != current.status):
            chosen[key.institution_id] = key
    return [chosen.get(inst.pk) for inst in institutions]


def dashboard_context(*, today: dt.date | None = None, latest: int = 8) -> dict:
    """Scheduled jobs, notices that failed for good, counts per key state, the chart, submissions, failing checks."""
    # Each key's state on its institution's day (an explicit `today` counts every key from that one day);
    # the chart's months are the reader's.
    days = {"today": today} if today else {"now": timezone.now()}
    today = today or local_today()
    served = Institution.objects.filter(status__in=Institution.SERVED_STATUSES)
    counted = dict(
        institutions_with_key_status(queryset=served, **days)
        .values_list("key_state")
        .annotate(n=Count("pk"))
        .values_list("key_state", "n")
        .order_by()
    )
    counts = [{"state": state, "label": label, "count": counted.get(state, 0)} for state, label in KeyState.choices]
    keys = CD2Credential.objects.without_secrets().select_related("institution")
    latest_submissions = list(keys.order_by("-submitted_at", "-pk")[:latest])
    failing = list(
        institutions_with_key_status(queryset=served, **days)
        .filter(key_state=KeyState.FAILING)
        .order_by("name")[:latest]
    )
    keys = _failed_keys(failing)
    failing = [FailingCheck(institution=inst, key=key) for inst, key in zip(failing, keys, strict=True)]
    failed_notices = Notice.objects.filter(state=Notice.State.FAILED).select_related("institution")
    return {
        "jobs": jobs_status(),
        "failed_notices": list(failed_notices.order_by("-closed_at", "-pk")[:latest]),
        "failed_notices_total": failed_notices.count(),
        "today": today,
        "counts": counts,
        "served_total": sum(c["count"] for c in counts),
        "no_working_key": institutions_without_working_key(now=days.get("now")).count(),
        "chart": expiry_chart(today=today),
        "latest_submissions": latest_submissions,
        "failing": failing,
    }
