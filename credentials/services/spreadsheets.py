"""Reading an uploaded table (CSV or XLSX) within bounds: a hostile file is refused, in words, before it costs much.

The bulk import (services/onboarding.py) reads what staff upload. The 10 MB
body limit bounds the upload, not what it unpacks to: an XLSX of 1.6 KB
declaring one row at 1,048,576, or the range A1:XFD5000, held a web worker
for a minute or took it past 700 MB with django-import-export's reader,
which pads every missing row and column. So, before and while parsing:

- XLSX: the zip's central directory first (no member is unpacked for it):
  at most IMPORT_MAX_UNPACKED_BYTES in all, no member unpacking more than
  IMPORT_MAX_COMPRESSION_RATIO times its packed size (a zip bomb), a sane
  number of members; zipfile never unpacks more of a member than its
  declared size. Then each worksheet's declared dimension (the
  `<dimension ref="A1:XFD5000"/>` near its start, read from its first
  64 KB) against IMPORT_MAX_ROWS and IMPORT_MAX_COLUMNS. Then the active
  sheet is streamed cell by cell (defusedxml's iterparse: no DTD, no
  entities), each cell and row dropped once read, stopping at the first
  stored row past the row limit or value past the column limit; a dimension
  that is missing or lies changes nothing. Why not openpyxl's reader (which
  django-import-export uses): even read-only it pads every missing row up to
  the next one it finds and builds each stored row whole, so one row of a
  million cells, or one row at 1,048,576, costs what it declares. Values are
  what Excel last saved (a formula's cached result); a date comes as its
  serial number, which none of the import's columns hold.
- CSV: Python's csv reader row by row, stopping at the first row past the
  limit; a cell longer than IMPORT_MAX_CELL_CHARACTERS (or the csv module's
  own 128 KB field limit) is refused.

Each refusal is an UploadRefused whose message says what was found and the
limit; the admin shows it on the upload form (institutions/admin.py asks
credentials/admin/institutions.py for the words).
`BoundedCSV` and `BoundedXLSX` are the django-import-export formats that
read this way (the only formats the import offers).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile

import tablib
from defusedxml.ElementTree import iterparse
from django.conf import settings
from import_export.formats import base_formats

# A workbook has a few dozen parts; thousands of members is not a spreadsheet.
MAX_MEMBERS = 1000
# The ratio is judged only on members large enough to matter (styles compress very well).
RATIO_FLOOR_BYTES = 1024 * 1024
# The dimension element sits after the sheet's properties, near its start.
DIMENSION_WINDOW_BYTES = 64 * 1024
_DIMENSION = re.compile(rb"<(?:\w+:)?dimension\b[^>]*?\bref=\"([A-Za-z$]+)?\$?(\d+)?(?::\$?([A-Za-z]+)\$?(\d+))?\"")
_SHEET = re.compile(r"^xl/worksheets/[^/]+\.xml$")


class UploadRefused(ValueError):
    """An upload the import will not read; the message is for the staff member who uploaded it."""


def _limits() -> tuple[int, int, int]:
    return settings.IMPORT_MAX_ROWS, settings.IMPORT_MAX_COLUMNS, settings.IMPORT_MAX_CELL_CHARACTERS


def _column_number(letters: str) -> int:
    number = 0
    for letter in letters.upper():
        number = number * 26 + ord(letter) - ord("A") + 1
    return number


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:,.1f} MB"


def _check_archive(archive: zipfile.ZipFile) -> None:
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise UploadRefused(f"This XLSX file has {len(members):,} parts; a workbook has a few dozen. Nothing was read.")
    unpacked = sum(member.file_size for member in members)
    if unpacked > settings.IMPORT_MAX_UNPACKED_BYTES:
        raise UploadRefused(
            f"This XLSX file unpacks to {_megabytes(unpacked)}; the import reads at most "
            f"{_megabytes(settings.IMPORT_MAX_UNPACKED_BYTES)}. Save fewer rows or sheets. Nothing was read."
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > RATIO_FLOOR_BYTES and ratio > settings.IMPORT_MAX_COMPRESSION_RATIO:
            raise UploadRefused(
                f"A part of this XLSX file unpacks to {ratio:,.0f} times its packed size (at most "
                f"{settings.IMPORT_MAX_COMPRESSION_RATIO} for a spreadsheet): it looks like a zip bomb. "
                "Nothing was read."
            )


def _check_declared_dimensions(archive: zipfile.ZipFile) -> None:
    max_rows, max_columns, _ = _limits()
    for name in archive.namelist():
        if not _SHEET.match(name):
            continue
        with archive.open(name) as sheet:
            start = sheet.read(DIMENSION_WINDOW_BYTES)
        found = _DIMENSION.search(start)
        if found is None:
            continue  # no dimension declared: the row and column caps below still hold
        first_column, first_row, last_column, last_row = (part.decode() if part else "" for part in found.groups())
        columns = _column_number(last_column or first_column or "A")
        rows = int(last_row or first_row or "1")
        reference = found.group(0).split(b'ref="')[1].rstrip(b'"').decode(errors="replace")
        if rows > max_rows + 1:
            raise UploadRefused(
                f"A sheet of this file declares the range {reference}: {rows:,} rows. The import reads at most "
                f"{max_rows:,} rows under the header. Nothing was read."
            )
        if columns > max_columns:
            raise UploadRefused(
                f"A sheet of this file declares the range {reference}: {columns:,} columns. The import reads at "
                f"most {max_columns} columns. Nothing was read."
            )


def _check_cell(value, *, row: int) -> None:
    _, _, max_characters = _limits()
    if isinstance(value, str) and len(value) > max_characters:
        raise UploadRefused(
            f"Row {row} has a cell of {len(value):,} characters; a cell holds at most {max_characters:,}. "
            "Nothing was read."
        )


def _dataset(rows) -> tablib.Dataset:
    """A Dataset from (sheet row number, values) pairs, the first being the header, within the limits.

    `dataset.row_numbers` holds each data row's number in the file (its
    sheet row, or its CSV line), so that an error names the row the staff
    member sees in their spreadsheet, blank lines and all.
    """
    max_rows, max_columns, _ = _limits()
    dataset = tablib.Dataset()
    dataset.row_numbers = []
    width = None
    for number, values in rows:
        values = list(values)
        if width is None:
            while values and values[-1] in (None, ""):
                values.pop()
            if len(values) > max_columns:
                raise UploadRefused(
                    f"The header row has more than {max_columns} columns; the import reads at most {max_columns}. "
                    "Nothing was read."
                )
            width = len(values)
            for value in values:
                _check_cell(value, row=number)
            dataset.headers = values
            continue
        if all(value in (None, "") for value in values):
            continue  # a blank line
        if len(dataset) >= max_rows:
            raise UploadRefused(
                f"This file has more than {max_rows:,} rows under the header; the import reads at most "
                f"{max_rows:,}. Split it into several files. Nothing was read."
            )
        extra = [value for value in values[width:] if value not in (None, "")]
        if extra:
            raise UploadRefused(
                f"Row {number} has a value beyond the last column with a header (at most {max_columns} columns). "
                "Nothing was read."
            )
        values = (values + [None] * width)[:width]
        for value in values:
            _check_cell(value, row=number)
        dataset.append(values)
        dataset.row_numbers.append(number)
    if width is None:
        raise UploadRefused("This file is empty: the import needs a header row. Nothing was read.")
    return dataset


# SpreadsheetML names, by their local part (the namespace varies: transitional or strict).
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attribute(element, name: str) -> str | None:
    """An attribute by its local name (r:id is namespaced)."""
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _active_sheet_path(archive: zipfile.ZipFile) -> str:
    """The member holding the workbook's active sheet (the one Excel opens on, as openpyxl's `active`)."""
    sheets, active = [], 0
    for _, element in iterparse(archive.open("xl/workbook.xml")):
        name = _local(element.tag)
        if name == "sheet":
            sheets.append(_attribute(element, "id"))
        elif name == "workbookView":
            active = int(element.get("activeTab", "0") or 0)
    targets = {}
    for _, element in iterparse(archive.open("xl/_rels/workbook.xml.rels")):
        if _local(element.tag) == "Relationship":
            targets[element.get("Id")] = element.get("Target", "")
    if not sheets:
        raise UploadRefused("This workbook has no sheet. Nothing was read.")
    target = targets[sheets[min(max(active, 0), len(sheets) - 1)]]
    return target.lstrip("/") if target.startswith("/") else f"xl/{target}"


def _shared_strings(archive: zipfile.ZipFile) -> list[str]:
    """The workbook's shared strings (each the text of its runs, without phonetic hints); [] when it has none.

    A sheet within the limits uses at most (rows + 1) x columns of them:
    more is refused before they are all read.
    """
    if "xl/sharedStrings.xml" not in archive.namelist():
        return []
    max_rows, max_columns, _ = _limits()
    most = (max_rows + 1) * max_columns
    strings, parts, in_phonetic, table = [], [], 0, None
    for event, element in iterparse(archive.open("xl/sharedStrings.xml"), events=("start", "end")):
        name = _local(element.tag)
        if name == "sst" and event == "start":
            table = element
        elif name == "rPh":
            in_phonetic += 1 if event == "start" else -1
        elif event == "end" and name == "t" and not in_phonetic:
            parts.append(element.text or "")
        elif event == "end" and name == "si":
            strings.append("".join(parts))
            parts = []
            if len(strings) > most:
                raise UploadRefused(
                    f"This workbook holds more than {most:,} texts; a sheet of {max_rows:,} rows and "
                    f"{max_columns} columns needs at most that many. Nothing was read."
                )
            if table is not None:
                table.remove(element)
    return strings


def _cell_value(element, kind: str, shared: list[str]):
    """A cell's value as Excel last saved it (a formula's cached result), or None."""
    if kind == "inlineStr":
        return "".join(t.text or "" for t in element.iter() if _local(t.tag) == "t")
    raw = next((v.text for v in element if _local(v.tag) == "v"), None)
    if raw is None:
        return None
    if kind == "s":
        return shared[int(raw)]
    if kind == "b":
        return raw == "1"
    if kind in ("str", "e", "d"):
        return raw
    number = float(raw)  # "n", the default
    return int(number) if number.is_integer() and "E" not in raw.upper() else number


_CELL_REFERENCE = re.compile(r"([A-Za-z]{1,3})(\d*)")


def _sheet_rows(archive: zipfile.ZipFile, path: str, shared: list[str]):
    """(row number, values of the first IMPORT_MAX_COLUMNS columns) per stored row, streamed.

    Every cell and row is dropped once read, so memory holds one row of at
    most IMPORT_MAX_COLUMNS values whatever the sheet's size; a value in a
    column past the limit, or a stored row past the row limit, stops the
    reading with UploadRefused.
    """
    max_rows, max_columns, _ = _limits()
    row_number, column, values, row, rows_parent = 0, 0, {}, None, None
    for event, element in iterparse(archive.open(path), events=("start", "end")):
        name = _local(element.tag)
        if event == "start":
            if name == "sheetData":
                rows_parent = element
            elif name == "row":
                row = element
                row_number = int(element.get("r") or row_number + 1)
                column, values = 0, {}
                if row_number > max_rows + 1:
                    raise UploadRefused(
                        f"The sheet has rows past row {max_rows + 1:,} (row {row_number:,}, perhaps empty or only "
                        f"formatted); the import reads at most {max_rows:,} rows under the header. Copy the rows "
                        "to a new sheet, or split the file. Nothing was read."
                    )
            continue
        if name == "c":
            reference = _CELL_REFERENCE.match(element.get("r") or "")
            column = _column_number(reference.group(1)) if reference else column + 1
            if column > max_columns:
                raise UploadRefused(
                    f"Row {row_number:,} has a cell in column {column:,} (perhaps empty or only formatted); the "
                    f"import reads at most {max_columns} columns. Delete the columns past the data, or copy the "
                    "data to a new sheet. Nothing was read."
                )
            value = _cell_value(element, element.get("t", "n"), shared)
            if value not in (None, ""):
                values[column] = value
            if row is not None:
                row.remove(element)
        elif name == "row":
            yield row_number, [values.get(n) for n in range(1, max(values, default=0) + 1)]
            if rows_parent is not None:
                rows_parent.remove(element)
            row = None


def read_xlsx(data: bytes) -> tablib.Dataset:
    """The active sheet of an XLSX workbook, within the limits; UploadRefused otherwise."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            _check_archive(archive)
            _check_declared_dimensions(archive)
            shared = _shared_strings(archive)
            # Rows as stored: a missing row is not padded in (openpyxl pads up to each row it finds).
            return _dataset(_padded(_sheet_rows(archive, _active_sheet_path(archive), shared)))
    except UploadRefused:
        raise
    except Exception as exc:  # whatever a hostile file makes the zip or XML parser raise
        raise UploadRefused(f"This file could not be read as an XLSX workbook ({type(exc).__name__}).") from None


def _padded(rows):
    """The header first, then data rows: a blank leading row is not the header."""
    seen_header = False
    for number, values in rows:
        if not seen_header and not any(value not in (None, "") for value in values):
            continue
        seen_header = True
        yield number, values


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _lines(text: str):
    """The file's lines (ends kept, as csv wants), none longer than a row within the limits could be.

    Checked before csv splits a line into cells, and without copying the
    text: a 10 MB line of short cells would be millions of strings.
    """
    _, max_columns, max_characters = _limits()
    longest = max_columns * (max_characters + 3) + 2  # every cell quoted, with its comma, and the line's end
    for number, line in enumerate(_LINE.finditer(text), start=1):
        if line.end() - line.start() > longest:
            raise UploadRefused(
                f"Line {number:,} of this file is {line.end() - line.start():,} characters long; a row of "
                f"{max_columns} cells of at most {max_characters:,} characters each is shorter. Nothing was read."
            )
        yield line.group(0)


def read_csv(text: str) -> tablib.Dataset:
    """A CSV table, within the limits; UploadRefused otherwise."""
    reader = csv.reader(_lines(text))
    try:
        return _dataset((reader.line_num, row) for row in reader)
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            _, _, max_characters = _limits()
            raise UploadRefused(
                f"Near line {reader.line_num:,} a cell holds more than {csv.field_size_limit():,} characters; "
                f"a cell holds at most {max_characters:,}. Nothing was read."
            ) from None
        raise UploadRefused(f"This file could not be read as CSV near line {reader.line_num:,}: {exc}.") from None


class BoundedCSV(base_formats.CSV):
    def create_dataset(self, in_stream, **kwargs):
        if isinstance(in_stream, bytes):
            in_stream = in_stream.decode(self.encoding or "utf-8-sig")
        return read_csv(in_stream)


class BoundedXLSX(base_formats.XLSX):
    def create_dataset(self, in_stream):
        return read_xlsx(in_stream)
