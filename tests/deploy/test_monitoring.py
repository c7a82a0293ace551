"""The alerting rules and the dashboard: checked by promtool, and naming only real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

import reconciler.resources  # noqa: F401  (the metrics pre-create a series per type)
from reconciler.daemon.metrics import Metrics
from tests.conftest import need

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAME = re.compile(r"\breconciler_[a-z_]+")


def exported() -> set[str]:
    names: set[str] = set()
    for family in text_string_to_metric_families(Metrics().render().decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def promtool() -> str:
    return need("promtool")


class TestAlerts:
    def test_rules_are_valid(self) -> None:
        done = subprocess.run(
            [promtool(), "check", "rules", str(DEPLOY / "prometheus/alerts.yaml")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS: 8 rules found" in done.stdout

    def test_every_alert_fires_when_it_should_and_only_then(self) -> None:
        done = subprocess.run(
            [promtool(), "test", "rules", str(DEPLOY / "prometheus/alerts_test.yaml")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())
        tests = yaml.safe_load((DEPLOY / "prometheus/alerts_test.yaml").read_text())
        tested = {
            case["alertname"]
            for group in tests["tests"]
            for case in group["alert_rule_test"]
            if case["exp_alerts"]
        }
        alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
        assert alerts == tested

    def test_rules_name_only_exported_metrics(self) -> None:
        text = (DEPLOY / "prometheus/alerts.yaml").read_text()
        assert set(NAME.findall(text)) <= exported()


class TestDashboard:
    def test_every_panel_queries_exported_metrics(self) -> None:
        board = json.loads((DEPLOY / "grafana/reconciler.json").read_text())
        names = exported()
        assert board["panels"]
        for panel in board["panels"]:
            assert panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                used = set(NAME.findall(target["expr"]))
                assert used, target["expr"]
                assert used <= names, (panel["title"], used - names)
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "instance"} <= variables
