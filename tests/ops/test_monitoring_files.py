"""docs/monitoring/: the alert rules and the Grafana dashboard parse, and name only what /metrics serves.

Every metric a rule or a panel queries, every label it matches on and every
label value it matches exactly is checked against a real scrape of
/metrics, so renaming a metric or a state breaks this test, not the
on-call's pager. Where promtool is installed (CI installs Debian's
prometheus package for it) it checks the rules, and the dashboard's queries
as recording rules, with Prometheus' own parser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.urls import reverse
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "docs" / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "docs" / "monitoring" / "dashboard.json"
TOKEN = "monitoring-files-test-token"

SELECTOR = re.compile(r"\b((?:cd2|django)_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
DURATION = re.compile(r"\A\d+[smhd]\Z")


@pytest.fixture
def served(client, settings, make_institution, make_credential):
    """{sample name: {label name: {values}}} from a scrape of /metrics with a little data."""
    from credentials.services import health

    settings.METRICS_TOKEN = TOKEN
    make_credential(make_institution(), days=3)
    health.job_record(
        name=health.JOB_SWEEP_NOTICES,
        started_at=make_institution().created_at,
        finished_at=make_institution().created_at,
        counts={"queued": 0},
    )
    client.get(reverse("healthz"))  # a request: the host's request and database numbers have a series
    text = client.get(reverse("metrics"), headers={"Authorization": f"Bearer {TOKEN}"}).content.decode()
    found: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = found.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    return found


def _problems(expr: str, served: dict) -> list[str]:
    """What in a PromQL expression names a metric, label or value that /metrics does not serve."""
    problems = []
    selectors = SELECTOR.findall(expr)
    if not selectors:
        problems.append(f"no cd2_ or django_ metric in {expr!r}")
    for name, matchers in selectors:
        if name not in served:
            problems.append(f"{name} is not served")
            continue
        for label, op, value in MATCHER.findall(matchers):
            values = served[name].get(label)
            if values is None:
                problems.append(f"{name} has no label {label}")
            elif op == "=" and value not in values:
                problems.append(f'{name}{{{label}="{value}"}} matches no series')
            elif op == "=~" and not all(part in values for part in value.split("|")):
                problems.append(f"{name}{{{label}=~{value!r}}}: not every alternative is served")
    # "by (...)" names labels of the metrics it aggregates.
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if not any(label in served[name] for name, _ in selectors if name in served):
                problems.append(f"by ({label}): no metric here has that label")
    return problems


def _rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_alert_rules_are_well_formed_and_cover_what_the_issue_asks():
    rules = _rules()
    assert len({rule["alert"] for rule in rules}) == len(rules)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    names = " ".join(rule["expr"] for rule in rules)
    # A key expiring within 7 days, a job overdue, a notice waiting over 2 hours, notices given up, the gateway.
    for metric in (
        'cd2_institutions{key_state="expiring_7d"}',
        "cd2_job_overdue",
        "cd2_outbox_oldest_waiting_age_seconds) > 7200",
        'cd2_outbox_notices{state="failed"}',
        "cd2_gateway_request_duration_seconds_count",
    ):
        assert metric in names


def test_every_alert_rule_names_only_what_metrics_serves(served):
    problems = {rule["alert"]: _problems(rule["expr"], served) for rule in _rules()}
    assert {alert: found for alert, found in problems.items() if found} == {}


def test_the_dashboard_parses_and_its_queries_name_only_what_metrics_serves(served):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
    problems = {f"{title}: {expr}": _problems(expr, served) for title, expr in _dashboard_queries()}
    assert {query: found for query, found in problems.items() if found} == {}


def test_the_checker_finds_a_wrong_name_label_and_value(served):
    assert _problems("cd2_institutions_total > 0", served) == ["cd2_institutions_total is not served"]
    assert _problems('cd2_institutions{state="ok"}', served) == ["cd2_institutions has no label state"]
    assert _problems('cd2_institutions{key_state="lapsed"}', served) == [
        'cd2_institutions{key_state="lapsed"} matches no series'
    ]
    assert _problems("max by (job) (cd2_institutions)", served) == ["by (job): no metric here has that label"]


def test_promtool_accepts_the_rules_and_the_dashboards_queries(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs it (Debian's prometheus package)")
        pytest.skip("promtool is not installed (apt-get install prometheus); the parse tests above still ran")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The dashboard's queries as recording rules: promtool parses each with Prometheus' own PromQL parser.
    recording = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": expr} for n, (_, expr) in enumerate(_dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(recording))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
