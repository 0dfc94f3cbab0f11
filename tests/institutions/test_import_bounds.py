"""Hostile uploads to the bulk import are refused in words, in under a second, with a worker's memory below 200 MB.

The files of issue 24: an XLSX of a few KB declaring one row at 1,048,576, one
declaring A1:XFD5000, a zip bomb, and a CSV of 10 MB with one enormous cell
(plus the variants that hide the same from the declared dimension). Each is
posted to the admin's real upload form (the refusal shown, nothing written),
and each is parsed in a fresh Python process with Django loaded, as a web
worker would parse it, whose time and peak memory (ru_maxrss) are measured.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import openpyxl
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from credentials.services.spreadsheets import UploadRefused, read_csv, read_xlsx
from institutions.models import Institution

ROOT = Path(__file__).resolve().parents[2]
IMPORT_URL = reverse("admin:institutions_institution_import")
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MEMORY_LIMIT_MB = 200
SECONDS_LIMIT = 1.0

CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    "</Types>"
)
PACKAGE_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
    'officeDocument" Target="xl/workbook.xml"/></Relationships>'
)
WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Institutions" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
    'worksheet" Target="worksheets/sheet1.xml"/></Relationships>'
)


def cell(reference: str, text: str) -> str:
    return f'<c r="{reference}" t="inlineStr"><is><t>{text}</t></is></c>'


HEADER = f'<row r="1">{cell("A1", "name")}{cell("B1", "canvas_domain")}</row>'


def workbook(sheet_data: str, *, dimension: str | None = None, extra: dict | None = None) -> bytes:
    """A minimal XLSX whose one sheet holds `sheet_data` (the <sheetData> children), as a hostile file is made."""
    declared = f'<dimension ref="{dimension}"/>' if dimension else ""
    sheet = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f"{declared}<sheetData>{sheet_data}</sheetData></worksheet>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
        archive.writestr("_rels/.rels", PACKAGE_RELS)
        archive.writestr("xl/workbook.xml", WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
        archive.writestr("xl/worksheets/sheet1.xml", sheet)
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return out.getvalue()


def zip_bomb(*, unpacked: int) -> bytes:
    """A workbook whose sheet unpacks to `unpacked` bytes of spaces (deflate packs them about 1,000 to 1)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
        archive.writestr("_rels/.rels", PACKAGE_RELS)
        archive.writestr("xl/workbook.xml", WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
        with archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>')
            chunk = b" " * (1024 * 1024)
            for _ in range(unpacked // len(chunk)):
                sheet.write(chunk)
            sheet.write(b"</sheetData></worksheet>")
    return out.getvalue()


def enormous_cell_csv(size: int = 10_000_000, *, line_every: int | None = None) -> bytes:
    """A CSV of `size` bytes: a header, then one row whose first cell is nearly all of it (newlines inside if asked)."""
    head = b"name,canvas_domain\n"
    tail = b'",big.instructure.com\n'
    body = b"x" * (size - len(head) - len(tail) - 1)
    if line_every:
        body = b"\n".join(body[i : i + line_every] for i in range(0, len(body), line_every + 1))
    return head + b'"' + body + tail


HOSTILE = {
    # name: (file name, bytes, words the refusal must hold)
    "one row at 1,048,576": (
        "row.xlsx",
        lambda: workbook(HEADER + f'<row r="1048576">{cell("A1048576", "x")}</row>'),
        "row 1,048,576",
    ),
    "one row at 1,048,576, declared": (
        "row-declared.xlsx",
        lambda: workbook(HEADER + f'<row r="1048576">{cell("A1048576", "x")}</row>', dimension="A1:B1048576"),
        "A1:B1048576: 1,048,576 rows",
    ),
    "A1:XFD5000": (
        "wide.xlsx",
        lambda: workbook(HEADER + f'<row r="5000">{cell("A5000", "x")}</row>', dimension="A1:XFD5000"),
        "A1:XFD5000: 16,384 columns",
    ),
    "a cell in column XFD, undeclared": (
        "wide-undeclared.xlsx",
        lambda: workbook(f'<row r="1">{cell("A1", "name")}{cell("XFD1", "x")}</row>'),
        "column 16,384",
    ),
    "zip bomb, 200 MB unpacked": ("bomb.xlsx", lambda: zip_bomb(unpacked=200 * 1024 * 1024), "unpacks to 209.7 MB"),
    "zip bomb, 12 MB at 1,000 to 1": (
        "ratio.xlsx",
        lambda: zip_bomb(unpacked=12 * 1024 * 1024),
        "looks like a zip bomb",
    ),
    "CSV of 10 MB, one enormous cell": ("huge.csv", enormous_cell_csv, "Line 2 of this file is 9,999,981 characters"),
    "CSV of 10 MB, one enormous cell over many lines": (
        "huge-lines.csv",
        lambda: enormous_cell_csv(line_every=100),
        "a cell holds more than 131,072 characters",
    ),
}


def upload(name: str, data: bytes) -> SimpleUploadedFile:
    kind = XLSX_TYPE if name.endswith(".xlsx") else "text/csv"
    return SimpleUploadedFile(name, data, content_type=kind)


def format_index(client, name: str) -> str:
    form = client.get(IMPORT_URL).context["form"]
    wanted = "xlsx" if name.endswith(".xlsx") else "csv"
    return next(str(value) for value, label in form.fields["format"].choices if str(label).lower() == wanted)


@pytest.fixture
def importer(client, make_staff, verified_login):
    verified_login(client, make_staff("Customer success", username="cara"))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize("what", HOSTILE)
def test_the_admin_refuses_each_hostile_file_in_words_in_under_a_second(importer, what):
    name, make, words = HOSTILE[what]
    data = make()
    chosen = format_index(importer, name)
    # CPU time, not the wall clock: a file that makes the worker spin shows in it, while other
    # processes on a loaded machine (CI, parallel workers) do not.
    started = time.process_time()
    response = importer.post(IMPORT_URL, {"import_file": upload(name, data), "format": chosen})
    seconds = time.process_time() - started
    assert response.status_code == 200
    errors = response.context["form"].errors["import_file"]
    assert any(words in error for error in errors), errors
    assert any("Nothing was read" in error for error in errors)
    assert seconds < SECONDS_LIMIT, f"{what}: {seconds:.2f} s"
    assert not Institution.objects.exists()


MEASURE = """
import json, resource, sys, time
import django
django.setup()
from credentials.services.spreadsheets import BoundedCSV, BoundedXLSX, UploadRefused

def peak_mb():
    # VmHWM: this process's own peak resident memory. (ru_maxrss would do, but Linux carries the
    # peak of the forked pytest process across exec into it, so it starts at pytest's size.)
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

results = {"baseline_mb": peak_mb(), "files": {}}
for path in sys.argv[1:]:
    raw = open(path, "rb").read()
    # As django-import-export hands the stored upload over: bytes for XLSX, text for CSV.
    data, reader = (raw, BoundedXLSX()) if path.endswith(".xlsx") else (raw.decode("utf-8-sig"), BoundedCSV())
    started = time.process_time()  # CPU seconds: the machine's other load does not count
    try:
        reader.create_dataset(data)
        refusal = None
    except UploadRefused as exc:
        refusal = str(exc)
    results["files"][path] = {"seconds": time.process_time() - started, "peak_mb": peak_mb(), "refusal": refusal}
print(json.dumps(results))
"""


def test_a_worker_parsing_every_hostile_file_stays_under_200_mb_and_a_second_each(tmp_path, capsys):
    paths = []
    for what, (name, make, _) in HOSTILE.items():
        path = tmp_path / name
        path.write_bytes(make())
        paths.append((what, path))
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, *(str(path) for _, path in paths)],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    lines = [f"baseline after django.setup(): {measured['baseline_mb']:.0f} MB"]
    for what, path in paths:
        figures = measured["files"][str(path)]
        size = path.stat().st_size
        lines.append(f"{what} ({size:,} bytes): {figures['seconds'] * 1000:.0f} ms, peak {figures['peak_mb']:.0f} MB")
        assert figures["refusal"], f"{what} was read"
        assert figures["seconds"] < SECONDS_LIMIT, lines[-1]
        assert figures["peak_mb"] < MEMORY_LIMIT_MB, lines[-1]
    with capsys.disabled():
        print("\n[hostile uploads] " + "\n[hostile uploads] ".join(lines))


# --------------------------------------------------------------------------
# The limits themselves, and files within them
# --------------------------------------------------------------------------


def csv_text(rows: int, columns: int = 2) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "canvas_domain", *(f"extra{n}" for n in range(columns - 2))])
    for n in range(rows):
        writer.writerow([f"College {n}", f"c{n}.instructure.com", *([""] * (columns - 2))])
    return out.getvalue()


def test_5000_rows_and_30_columns_are_read_and_one_more_of_either_is_refused():
    assert len(read_csv(csv_text(5000))) == 5000
    with pytest.raises(UploadRefused, match="more than 5,000 rows"):
        read_csv(csv_text(5001))
    assert len(read_csv(csv_text(3, columns=30)).headers) == 30
    with pytest.raises(UploadRefused, match="more than 30 columns"):
        read_csv(csv_text(3, columns=31))


def test_a_workbook_saved_by_a_spreadsheet_program_is_read_whole(settings):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["name", "canvas_domain", "status", "contacts"])
    for n in range(5000):
        sheet.append([f"College {n}", f"c{n}.instructure.com", "onboarding", f"Ada <ada{n}@c{n}.edu>"])
    saved = io.BytesIO()
    book.save(saved)

    dataset = read_xlsx(saved.getvalue())

    assert dataset.headers == ["name", "canvas_domain", "status", "contacts"]
    assert len(dataset) == 5000
    assert dataset[4999] == ("College 4999", "c4999.instructure.com", "onboarding", "Ada <ada4999@c4999.edu>")

    sheet.insert_rows(2500)  # a blank row among them: it is skipped, but the sheet now reaches row 5,002
    saved = io.BytesIO()
    book.save(saved)
    with pytest.raises(UploadRefused, match="A1:D5002: 5,002 rows"):
        read_xlsx(saved.getvalue())
    sheet.delete_rows(5002)
    saved = io.BytesIO()
    book.save(saved)
    assert len(read_xlsx(saved.getvalue())) == 4999


def test_shared_strings_numbers_and_rich_text_are_read_as_excel_shows_them():
    shared = (
        '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        "<si><t>name</t></si><si><t>canvas_domain</t></si>"
        "<si><r><t>North</t></r><r><t>field</t></r></si></sst>"
    )
    rows = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2"><c r="A2" t="s"><v>2</v></c><c r="B2"><v>42</v></c></row>'
    )
    dataset = read_xlsx(workbook(rows, extra={"xl/sharedStrings.xml": shared}))
    assert dataset.headers == ["name", "canvas_domain"] and dataset[0] == ("Northfield", 42)


def test_an_xml_entity_bomb_is_refused():
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        '<row r="1"><c r="A1" t="inlineStr"><is><t>&lol2;</t></is></c></row></sheetData></worksheet>'
    )
    data = workbook("")
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as archive:
        for member in source.namelist():
            content = bomb if member == "xl/worksheets/sheet1.xml" else source.read(member)
            archive.writestr(member, content)
    with pytest.raises(UploadRefused, match="could not be read as an XLSX workbook"):
        read_xlsx(out.getvalue())


def test_too_many_shared_texts_are_refused_before_they_are_all_read(settings):
    settings.IMPORT_MAX_ROWS, settings.IMPORT_MAX_COLUMNS = 10, 2
    shared = (
        '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        + "".join(f"<si><t>t{n}</t></si>" for n in range(100))
        + "</sst>"
    )
    with pytest.raises(UploadRefused, match="more than 22 texts"):
        read_xlsx(workbook(HEADER, extra={"xl/sharedStrings.xml": shared}))
