"""One way to write dates, times and names wherever people read them (credentials/formatting.py).

The scan below fails on any date written another way in a template or in
production Python: a `|date:` or `|time:` filter, a `.strftime(`, an
f-string date format. Machine formats have their place in the allow-list,
each with its reason.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from pathlib import Path

import pytest
from django.template import Context, Template
from django.utils import formats

from credentials.formatting import format_day, format_moment, format_month, format_weekday, possessive

ROOT = Path(__file__).resolve().parent.parent.parent
PYTHON_PACKAGES = ("api", "credentials", "institutions", "edpotential")

TEMPLATE_STRAY = re.compile(r"\|\s*(?:date|time)\b|\|\s*timezone\s*:")
PYTHON_STRAY = re.compile(
    r"\.strftime\(|\bdate_format\(|\btime_format\(|\|date:|\|time:"
    r"|\{[^{}\n]*:%[^{}\n]*\}"  # an f-string date format such as {day:%d %b %Y}
)

# (file, text of the line) -> why this one is a machine format, not for people.
ALLOWED = {
    ("templates/credentials/submit.html", "short_expiry_before|date:'Y-m-d'"): (
        "a data- attribute the page's script compares with the date input's ISO value"
    ),
    ("credentials/admin/dashboard.py", "{self.month:%Y-%m}"): "the institution list's month filter value in a URL",
    ("credentials/admin/institutions.py", "{timezone.localdate():%Y-%m-%d}"): "the CSV export's file name",
    ("api/services.py", "{active.expires_on:%Y-%m-%d}"): "the data pipeline API's error text (ISO for programs)",
}
# Not uses but definitions: the one place, and Django's formats that follow it.
DEFINITIONS = {"credentials/formatting.py", "edpotential/formats/en_GB/formats.py"}


def strays(files: list[Path], pattern: re.Pattern[str]) -> list[str]:
    found = []
    for path in files:
        name = path.relative_to(ROOT).as_posix()
        if name in DEFINITIONS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for match in pattern.finditer(line):
                if any(name == file and text in line for file, text in ALLOWED):
                    continue
                found.append(f"{name}:{number}: {match.group(0)!r} in {line.strip()[:100]}")
    return found


def template_files() -> list[Path]:
    return sorted(p for p in (ROOT / "templates").rglob("*") if p.suffix in (".html", ".txt"))


def python_files() -> list[Path]:
    return sorted(
        path for package in PYTHON_PACKAGES for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts
    )


def test_templates_write_dates_only_with_the_house_filters():
    assert strays(template_files(), TEMPLATE_STRAY) == []


def test_production_python_writes_dates_only_with_the_house_functions():
    assert strays(python_files(), PYTHON_STRAY) == []


def test_each_allowed_machine_format_is_still_there():
    """A stale allow-list entry would let a real stray with the same text through later."""
    for file, text in ALLOWED:
        assert text in (ROOT / file).read_text(), file


def test_the_scan_finds_a_planted_stray(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "templates").mkdir()
    page = tmp_path / "templates" / "page.html"
    page.write_text('<p>{{ key.expires_on|date:"j M Y" }} {{ at|time }} {{ key.expires_on|day }}</p>\n')
    code = tmp_path / "code.py"
    code.write_text('a = f"{day:%d %b}"\nb = when.strftime("%H:%M")\nc = f"{name} {count:>3}"\n')

    assert len(strays([page], TEMPLATE_STRAY)) == 2
    assert [s.split(":")[1] for s in strays([code], PYTHON_STRAY)] == ["1", "2"]


# --------------------------------------------------------------------------
# The formats
# --------------------------------------------------------------------------

MOMENT = dt.datetime(2026, 12, 3, 5, 25, tzinfo=dt.UTC)


def test_days_moments_and_months_are_written_one_way():
    assert format_day(dt.date(2026, 12, 3)) == "3 Dec 2026"
    assert format_weekday(dt.date(2026, 12, 3)) == "Thursday 3 Dec 2026"
    assert format_month(dt.date(2026, 12, 1)) == "Dec 2026"
    assert format_moment(MOMENT, "UTC") == "3 Dec 2026, 05:25"
    assert format_moment(MOMENT, "Pacific/Auckland", with_zone=True) == "3 Dec 2026, 18:25 NZDT"
    # The day of a moment is the reader's day: at 03:25 UTC it is still the 2nd in New York.
    early = MOMENT.replace(hour=3)
    assert format_day(early, zoneinfo.ZoneInfo("America/New_York")) == "2 Dec 2026"
    assert format_day(early, "UTC") == "3 Dec 2026"


def test_the_template_filters_are_everywhere_without_a_load():
    html = Template("{{ d|day }} · {{ d|weekday }} · {{ m|moment:'America/New_York' }} · {{ name|possessive }}").render(
        Context({"d": dt.date(2026, 12, 3), "m": MOMENT, "name": "Harbour City Schools"})
    )
    assert html == "3 Dec 2026 · Thursday 3 Dec 2026 · 3 Dec 2026, 00:25 EST · Harbour City Schools&#x27;"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Harbour City Schools", "Harbour City Schools'"),
        ("Northfield University", "Northfield University's"),
        ("ST. JAMES", "ST. JAMES'"),
        ("  Lakeside College ", "Lakeside College's"),
    ],
)
def test_possessives_read_as_english(name, expected):
    assert possessive(name) == expected


def test_djangos_own_admin_display_follows_the_house_formats():
    """Admin lists and read-only fields render dates with Django's formats (edpotential/formats), not en-gb's."""
    local = MOMENT.astimezone(zoneinfo.ZoneInfo("UTC"))
    assert formats.localize(local) == format_moment(MOMENT, "UTC")  # not "3 Dec 2026, 5:25 a.m."
    assert formats.localize(local.date()) == format_day(MOMENT, "UTC")
    assert formats.localize(local.time()) == "05:25"
