"""Prometheus config, alert rules (with promtool unit tests on synthetic series), Alertmanager routing
and the Grafana dashboard, checked against the metric names the code really exports."""
from __future__ import annotations

import json
import re
import subprocess

import yaml

from tests.ops.conftest import require_tool

PROM = "deploy/prometheus"


def promtool(repo, *args):
    return subprocess.run([require_tool("promtool", "prometheus"), *args], cwd=repo, capture_output=True,
                          text=True, timeout=60)


def test_prometheus_config_with_its_rules_is_valid(repo, tmp_path):
    # The compose file mounts the rules at /etc/prometheus/rules; point the glob at the repo copy so
    # `check config` also loads and checks them.
    config = yaml.safe_load((repo / PROM / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(repo / PROM / "rules" / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool(repo, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules found" in result.stdout + result.stderr


def test_alert_rules_pass_check_and_unit_tests(repo):
    result = promtool(repo, "check", "rules", f"{PROM}/rules/dsv-alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool(repo, "test", "rules", f"{PROM}/tests/dsv-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_broken_rule_is_caught(repo, tmp_path):
    """The checks above can fail: promtool rejects a rule with bad PromQL."""
    rules = yaml.safe_load((repo / PROM / "rules" / "dsv-alerts.yml").read_text())
    rules["groups"][1]["rules"][0]["expr"] = "histogram_quantile(0.99, sum by (le) (rate(x[5m]))"
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(rules))
    assert promtool(repo, "check", "rules", str(tmp_path / "broken.yml")).returncode != 0


def test_required_alerts_exist_and_gpu_rule_is_the_products(repo):
    rules = {r["alert"]: r for g in yaml.safe_load((repo / PROM / "rules" / "dsv-alerts.yml").read_text())["groups"]
             for r in g["rules"] if "alert" in r}
    assert {"ModelServerP99LatencyHigh", "ModelServerErrorRateHigh", "ModelServerQueueDeep",
            "FraudConsumerLagHigh", "ModelLoadSlow", "GPUTemperatureHigh"} <= set(rules)
    gpu = rules["GPUTemperatureHigh"]
    assert gpu["expr"].strip() == "DCGM_FI_DEV_GPU_TEMP > 85" and gpu["for"] == "5m"
    assert gpu["labels"]["action"] == "degrade"
    assert "> 1.2" in rules["ModelLoadSlow"]["expr"]


def test_alertmanager_routes_degrade_alerts_to_the_webhook(repo):
    am = yaml.safe_load((repo / "deploy/alertmanager/alertmanager.yml").read_text())
    route = next(r for r in am["route"]["routes"] if r["receiver"] == "dsv-degrade")
    assert route["matchers"] == ['action="degrade"']
    receiver = next(r for r in am["receivers"] if r["name"] == "dsv-degrade")
    hook = receiver["webhook_configs"][0]
    assert hook["url"] == "http://webhook:9095/alerts" and hook["send_resolved"] is True


def _exported_metric_names(repo) -> set[str]:
    """Metric names declared in the code (prometheus_client constructors), plus exporter-side series."""
    names = set()
    for path in [*repo.glob("core/**/*.py"), *repo.glob("shared/*.py"), *repo.glob("apps/**/*.py")]:
        names |= set(re.findall(r'(?:Histogram|Counter|Gauge|Summary)\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"',
                                path.read_text()))
    return names


def _metric_names_in(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [5m]
    tokens = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b", expr))
    return {t for t in tokens if t.startswith(("dsv_", "DCGM_"))}


def test_rules_and_dashboard_use_metric_names_the_code_exports(repo):
    exported = _exported_metric_names(repo)
    assert "dsv_serve_request_latency_seconds" in exported  # the serving layer exists in this checkout
    external = {"DCGM_FI_DEV_GPU_TEMP"}                      # from NVIDIA's DCGM exporter
    # App metrics that are allowed to be absent while an app is not part of this checkout.
    optional = {"dsv_finance_consumer_lag"} if not (repo / "apps/finance/service.py").exists() else set()

    def base(name: str) -> str:
        return re.sub(r"_(bucket|sum|count|total)$", "", name)

    exprs = [r["expr"] for g in yaml.safe_load((repo / PROM / "rules" / "dsv-alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    dashboard = json.loads((repo / "deploy/grafana/dashboards/dsv-overview.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [yaml.safe_load((repo / PROM / "adapter-rules.yml").read_text())["rules"][0]["metricsQuery"]]
    unknown = set()
    for expr in exprs:
        for name in _metric_names_in(expr):
            if name not in external | optional and name not in exported and base(name) not in exported:
                unknown.add(name)
    assert not unknown, f"metrics used by rules/dashboard but exported by no code: {sorted(unknown)}"


def test_grafana_provisioning_points_at_the_dashboard(repo):
    ds = yaml.safe_load((repo / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dashboard = json.loads((repo / "deploy/grafana/dashboards/dsv-overview.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    provider = yaml.safe_load((repo / "deploy/grafana/provisioning/dashboards/dsv.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_alertmanager_config_and_routing_with_amtool(repo):
    amtool = require_tool("amtool", "prometheus-alertmanager")
    config = f"--config.file={repo / 'deploy/alertmanager/alertmanager.yml'}"
    check = subprocess.run([amtool, "check-config", config.split("=", 1)[1]], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

    def receivers(*labels: str) -> str:
        result = subprocess.run([amtool, "config", "routes", "test", config, *labels], capture_output=True,
                                text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    # The GPU rule's labels reach the webhook (degrade) and the pager; other alerts only the pager.
    assert receivers("alertname=GPUTemperatureHigh", "action=degrade", "severity=critical") == "dsv-degrade,default"
    assert receivers("alertname=FraudConsumerLagHigh", "severity=warning") == "default"
