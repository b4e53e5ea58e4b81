"""The dashboard's and the alerts' PromQL, run by a real Prometheus that scrapes the real service on loopback.

One Prometheus (Debian's package) scrapes `python -m service` every second, with the chart's rendered
recording and alerting rules loaded, while the test sends clean digits, adversarial examples and bad
requests. Then every query of the Grafana dashboard, every rule and the prometheus-adapter rule are
evaluated through Prometheus' HTTP API: each must parse and return data, and the flagged-rate alert must
fire. promtool checks the rules, unit-tests the alerts on synthetic series, and lints `/metrics`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import DEFAULT_MODEL, EXAMPLES, free_port, serve
from tests.deploy.conftest import ADAPTER_RULES, DASHBOARD, NAMESPACE, RELEASE, render

# Metrics from exporters other than ours: their queries must parse; data comes only in a real cluster.
EXTERNAL = {"DCGM_FI_DEV_GPU_UTIL": "NVIDIA dcgm-exporter, on GPU nodes"}
# Grafana's variables as "All" selects them, and a rate window that spans several 1 s scrapes.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$namespace": ".*",
    "$job": ".*",
    "$model": ".*",
    "$version": ".*",
}
POD = f"{RELEASE}-5d9c7b-x2x7q"
ROUNDS = 4
ADVERSARIAL = "adversarial-pgd-digit-3.png"
RULE_VALUES = {"metrics": {"prometheusRule": {"enabled": True}}}
# NOTE: for the live Prometheus, `rate(...[10m])` divides by the whole window, so the test's 40 images over
# ~15 s read as 0.035/s, under the default floor of 0.05/s, and `for` would be 10 minutes. The defaults are
# unit-tested with promtool instead.
LIVE_RULE_VALUES = {
    "metrics": {"prometheusRule": {"enabled": True, "flaggedRate": {"for": "0s", "minImagesPerSecond": 0.01}}}
}


def rule_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    return render(values).one("PrometheusRule")["spec"]["groups"]


def rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return queries + [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]


def grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


@dataclass
class Monitored:
    """A Prometheus scraping the service, after the test traffic."""

    prometheus: str
    service: str
    images_sent: int

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", f"{expr}\n  -> {body.get('errorType')}: {body.get('error')}"
        return body["data"]["result"]

    def check_returns_data(self, expressions: list[str]) -> list[str]:
        """Evaluate each expression; return the problems (a parse error fails at once)."""
        missing = []
        for expr in expressions:
            if self.query(expr):
                continue
            waived = {m for m in EXTERNAL if m in expr}
            if not waived:
                missing.append(expr)
            else:
                print(f"no data yet, allowed ({', '.join(sorted(waived))}): {expr}")
        return missing


def _send_traffic(url: str) -> int:
    """Clean digits and adversarial examples in rounds a few scrapes apart, plus refused bad requests."""
    clean = sorted(EXAMPLES.glob("digit-*.png"))[:5]
    images = 0
    for _ in range(ROUNDS):
        for path in [*clean, *[EXAMPLES / ADVERSARIAL] * len(clean)]:
            response = httpx.post(
                f"{url}/v1/predict", files={"files": (path.name, path.read_bytes())}, timeout=30
            )
            assert response.status_code == 200
            images += 1
        assert (
            httpx.post(
                f"{url}/v1/predict", content=b"{", headers={"content-type": "application/json"}
            ).status_code
            == 400
        )
        assert httpx.get(f"{url}/v1/models/no-such-model").status_code == 404
        time.sleep(1.5)
    return images


@pytest.fixture(scope="module")
def monitored(
    prometheus_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitored]:
    prometheus_binary, _ = prometheus_binaries
    folder = tmp_path_factory.mktemp("prometheus")
    groups = rule_groups(LIVE_RULE_VALUES)
    (folder / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    with serve(folder) as server:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(folder / "rules.yaml")],
            "scrape_configs": [
                {
                    # The labels the chart's ServiceMonitor gives: job = Service name, plus namespace and pod.
                    "job_name": RELEASE,
                    "static_configs": [
                        {
                            "targets": [server.address],
                            "labels": {"namespace": NAMESPACE, "pod": POD},
                        }
                    ],
                }
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        process = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for(lambda: httpx.get(f"{url}/-/ready", timeout=1).status_code == 200, process, "ready")
            monitored = Monitored(url, server.url, _send_traffic(server.url))
            total = f'sum(defended_images_total{{job="{RELEASE}"}})'
            _wait_for(lambda: _value(monitored.query(total)) == monitored.images_sent, process, "scraped")
            # Let the rules evaluate the last scrapes: the flagged-rate alert (for: 0s) should be firing.
            deadline = time.monotonic() + 20
            while not monitored.query('ALERTS{alertstate="firing"}') and time.monotonic() < deadline:
                time.sleep(0.5)
            yield monitored
        finally:
            process.terminate()
            process.wait(timeout=30)


def _value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if result else None


def _wait_for(condition: Any, process: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        time.sleep(0.3)
    pytest.fail(f"prometheus not {what} within {timeout} s")


def test_every_dashboard_query_parses_and_returns_data(monitored: Monitored) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 25
    missing = monitored.check_returns_data([grafana(q) for q in queries])
    assert missing == [], "dashboard queries without data:\n" + "\n".join(missing)


def test_dashboard_variables_list_the_scraped_values(monitored: Monitored) -> None:
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    expected = {"namespace": NAMESPACE, "job": RELEASE, "model": "mnist-rse-apudae", "version": "1"}
    for variable in (v for v in variables if v["type"] == "query"):
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector, label = grafana(match[1]), match[2]
        body = httpx.get(
            f"{monitored.prometheus}/api/v1/label/{label}/values", params={"match[]": selector}
        ).json()
        assert body["status"] == "success" and expected[variable["name"]] in body["data"], (
            variable["name"],
            body,
        )


def test_recording_rules_return_data_and_only_the_attack_alert_fires(monitored: Monitored) -> None:
    all_rules = rules(rule_groups(LIVE_RULE_VALUES))
    recorded = [rule["expr"] for rule in all_rules if "record" in rule]
    assert monitored.check_returns_data(recorded) == []
    firing = {rule["alert"] for rule in all_rules if "alert" in rule and monitored.query(rule["expr"])}
    # Half the traffic is adversarial: far above the 6.9% clean baseline. Nothing else is wrong.
    assert firing == {"DefendedFlaggedRateAboveBaseline"}
    # NOTE: every shipped bundle is served; the traffic went to the default one.
    (share,) = monitored.query(f'defended:flagged:ratio_rate10m{{model="{DEFAULT_MODEL}"}}')
    (baseline,) = monitored.query(f'defended:flag_rate_baseline:max{{model="{DEFAULT_MODEL}"}}')
    assert float(baseline["value"][1]) == pytest.approx(0.069)
    assert 0.4 <= float(share["value"][1]) <= 1.0


def test_flagged_rate_alert_fires_in_prometheus(monitored: Monitored) -> None:
    alerts = httpx.get(f"{monitored.prometheus}/api/v1/alerts").json()["data"]["alerts"]
    (alert,) = [a for a in alerts if a["state"] == "firing"]
    assert alert["labels"]["alertname"] == "DefendedFlaggedRateAboveBaseline"
    assert alert["labels"]["model"] == "mnist-rse-apudae" and alert["labels"]["namespace"] == NAMESPACE
    assert "flagged as adversarial" in alert["annotations"]["description"]


def test_prometheus_adapter_rule_query_runs(monitored: Monitored) -> None:
    (rule,) = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    query = (
        rule["metricsQuery"]
        .replace("<<.GroupBy>>", "namespace, pod")
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}", pod=~"{POD}"')
    )
    assert monitored.check_returns_data([query, rule["seriesQuery"]]) == []


def test_promtool_lints_the_live_metrics(monitored: Monitored, prometheus_binaries: tuple[str, str]) -> None:
    _, promtool = prometheus_binaries
    exposition = httpx.get(f"{monitored.service}/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_rules(prometheus_binaries: tuple[str, str], tmp_path: Path) -> None:
    _, promtool = prometheus_binaries
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(RULE_VALUES)}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts(prometheus_binaries: tuple[str, str], tmp_path: Path) -> None:
    _, promtool = prometheus_binaries
    groups = rule_groups(RULE_VALUES)
    for rule in rules(groups):
        # NOTE: promtool compares annotations too; their templates are checked by `promtool check rules`.
        rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = shutil.copy(Path(__file__).parent / "testdata" / "alerts.test.yaml", tmp_path)
    result = subprocess.run(
        [promtool, "test", "rules", tests], capture_output=True, text=True, timeout=60, check=False
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
