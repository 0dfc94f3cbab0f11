"""docs/RUNBOOK.md's outage table and its tests say the same: every cell of every table has its test, and no more."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.outage.conftest import DOORS

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "RUNBOOK.md"


def tables() -> dict[str, list[tuple[str, str, str]]]:
    """Per test file named in a heading of the outage section: its rows (door, while down, after)."""
    text = RUNBOOK.read_text()
    section = text.split("## When a dependency is down: the outage table", 1)[1].split("\n## ", 1)[0]
    found: dict[str, list[tuple[str, str, str]]] = {}
    table = re.compile(r"^### .*?\(`(tests/outage/[a-z_]+\.py)`\)\n(.*?)(?=^### |\Z)", re.M | re.S)
    for heading, body in table.findall(section):
        rows = [line.strip("|").split(" | ") for line in body.splitlines() if line.startswith("| ")]
        found[heading] = [tuple(cell.strip() for cell in row) for row in rows[2:]]  # below the header and its rule
    return found


def test_the_runbook_has_a_table_for_each_dependency():
    assert sorted(tables()) == sorted(
        f"tests/outage/test_{name}.py"
        for name in ("postgresql", "redis_cache", "broker", "smtp", "gateway", "webhook_receiver")
    )


@pytest.mark.parametrize("path", sorted(tables()))
def test_each_table_has_every_door_in_order_and_each_cell_has_its_test(path):
    rows = tables()[path]
    assert [door for door, *_ in rows] == list(DOORS)
    assert all(len(row) == 3 and all(row) for row in rows), "each door says what happens while down and after"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert set(module.CELLS) == set(DOORS)  # the test file runs one cell per door (parametrized over DOORS)
