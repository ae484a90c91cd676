"""docker-compose.yml: valid for Debian's docker-compose, every command exists in this project, every
mounted file exists, health checks and persistent volumes where state lives, no secret in the repo."""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from shared.ops_cli import APPS
from tests.ops.conftest import require_tool


@pytest.fixture(scope="module")
def compose(repo) -> dict:
    """The compose file as docker-compose resolves it (anchors merged, .env.example interpolated)."""
    tool = require_tool("docker-compose", "docker-compose")
    check = subprocess.run([tool, "--env-file", ".env.example", "config", "-q"], cwd=repo,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    rendered = subprocess.run([tool, "--env-file", ".env.example", "config"], cwd=repo,
                              capture_output=True, text=True, timeout=60, check=True)
    return yaml.safe_load(rendered.stdout)


def test_compose_refuses_to_start_without_the_secrets(repo, tmp_path):
    """No default for a key: without a .env the stack does not start with guessable credentials."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = subprocess.run([require_tool("docker-compose", "docker-compose"), "--env-file", str(empty),
                             "config", "-q"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "set " in result.stderr


def test_services_present(compose):
    services = set(compose["services"])
    expected = {"kafka", "model-server", "prometheus", "alertmanager", "grafana", "webhook"}
    expected |= {f"{app}-{kind}" for app in APPS for kind in ("service", "dashboard")}
    assert expected <= services
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper


def test_every_command_exists_in_the_project(compose, check_command):
    problems = []
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, list) and command[0] in ("dsv", "streamlit"):
            why = check_command(command)
            if why:
                problems.append(f"{name}: {why}")
    assert not problems, "compose commands that this checkout does not provide:\n" + "\n".join(problems)


def volumes(service) -> list[tuple[str, str]]:
    """(source, kind) of each mount; docker-compose 1.29 prints the short "src:dst:mode" form."""
    out = []
    for volume in service.get("volumes", []):
        source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
        kind = "bind" if source.startswith(("/", ".")) else "volume"
        out.append((source, kind))
    return out


def test_mounted_files_exist(compose, repo):
    binds = [(name, source) for name, service in compose["services"].items()
             for source, kind in volumes(service) if kind == "bind"]
    assert binds, "expected the monitoring configs to be bind-mounted"
    for name, source in binds:
        assert (repo / source).exists(), f"{name} mounts {source}, which does not exist"


def test_health_checks_and_persistent_volumes(compose):
    services = compose["services"]
    for name, service in services.items():
        if name == "dcgm-exporter":
            continue  # GPU-only profile; NVIDIA's image has its own
        assert "healthcheck" in service, f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", f"{name} is not restarted on failure"

    def named_volumes(service):
        return {source for source, kind in volumes(service) if kind == "volume"}

    assert "kafka-data" in named_volumes(services["kafka"])          # topics + consumer offsets
    assert "dsv-adapters" in named_volumes(services["model-server"])
    assert "prometheus-data" in named_volumes(services["prometheus"])
    assert "grafana-data" in named_volumes(services["grafana"])
    for app in APPS:
        assert "dsv-data" in named_volumes(services[f"{app}-service"])  # checkpoints, scheduler state
        env = services[f"{app}-service"]["environment"]
        assert env["KAFKA_BOOTSTRAP"] == "kafka:9092" and env["DSV_SERVER_URL"] == "http://model-server:8000/v1"


def test_no_secret_in_the_repo(repo):
    text = (repo / "docker-compose.yml").read_text()
    # Keys and passwords only ever come from the environment (.env), never literal values.
    for match in re.finditer(r"(?im)^\s*([A-Z_]*(?:KEY|KEYS|PASSWORD|SECRET|TOKEN))\s*:\s*(.+)$", text):
        assert match.group(2).strip().strip('"').startswith("${"), match.group(0)
    example = (repo / ".env.example").read_text()
    values = [line.split("=", 1)[1] for line in example.splitlines()
              if "=" in line and not line.startswith("#") and re.search(r"KEY|PASSWORD", line.split("=")[0])]
    assert values and all("change-me" in v for v in values)
