"""`dsv run` (the local stack, no Docker), `dsv release` (the release gate) and `dsv webhook`
(the alert receiver that switches the model server into degrade mode).

`dsv run` launches the same services as docker-compose.yml, as supervised local processes
(shared/supervisor.py): the embedded Kafka broker, the model server, each app's service and each
app's Streamlit dashboard. A component whose command is not part of this checkout is skipped with a
message, so the stack grows as apps land without editing this file.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import REPO_ROOT, Settings

APPS = ("finance", "medical", "manufacturing", "legal")


@dataclass(frozen=True)
class AppServicePorts:
    """How `dsv <app> service` is told where to listen, with the app's own default port."""

    port_flag: str | None = None   # e.g. "--metrics-port"; None: the service listens on nothing
    port: int | None = None
    host_flag: bool = False        # accepts --host
    url_path: str = ""             # what to print: /metrics or /health


# Same ports in docker-compose.yml, deploy/prometheus/prometheus.yml and deploy/k8s/base/apps.yaml.
APP_SERVICES = {
    "finance": AppServicePorts("--metrics-port", 9108, url_path="/metrics"),  # scorer; adjudicator on +1
    "medical": AppServicePorts(),          # inbox watcher; heartbeat DSV_HOME/medical/service_status.json
    "manufacturing": AppServicePorts(),    # scheduler; heartbeat DSV_HOME/manufacturing/history.sqlite
    "legal": AppServicePorts("--port", 8704, host_flag=True, url_path="/health"),
}


# -- which commands exist -----------------------------------------------------------------------

def available_commands(parser: argparse.ArgumentParser | None = None) -> set[tuple[str, ...]]:
    """Every command path of the `dsv` parser, e.g. {("serve",), ("finance", "service"), ...}."""
    if parser is None:
        from core.cli import build_parser

        parser = build_parser()
    paths: set[tuple[str, ...]] = set()

    def walk(p: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    paths.add(prefix + (name,))
                    walk(sub, prefix + (name,))

    walk(parser, ())
    return paths


# -- dsv run ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StackOptions:
    """What `dsv run` starts and on which loopback ports."""

    apps: tuple[str, ...] = APPS
    server: bool = True
    services: bool = True
    dashboards: bool = True
    host: str = "127.0.0.1"
    server_port: int = 8000
    kafka_port: int = 9092
    dashboard_port: int = 8501   # first app; the others follow in APPS order
    extra_env: dict[str, str] = field(default_factory=dict)


def plan_stack(settings: Settings, options: StackOptions, commands: set[tuple[str, ...]], say=print):
    """The ordered child processes of the local stack (the broker first: it gates the rest)."""
    from shared.supervisor import ChildSpec

    python = sys.executable
    specs: list[ChildSpec] = []
    bootstrap = settings.kafka_bootstrap
    if bootstrap:
        say(f"kafka: using KAFKA_BOOTSTRAP={bootstrap} (no embedded broker)")
    else:
        from shared.broker import EmbeddedBroker, wait_for_kafka

        bootstrap = f"{options.host}:{options.kafka_port}"
        data_dir = settings.home / "kafka"
        data_dir.mkdir(parents=True, exist_ok=True)
        # Same command line as shared.broker.EmbeddedBroker, but supervised (restarted on crash).
        specs.append(ChildSpec(
            "kafka", EmbeddedBroker(data_dir, port=options.kafka_port).command(),
            url=f"kafka://{bootstrap}", ready=lambda: _kafka_answers(bootstrap, wait_for_kafka),
            ready_timeout=60.0))

    server_url = settings.server_url
    if options.server:
        if ("serve",) in commands:
            base = f"http://{options.host}:{options.server_port}"
            server_url = f"{base}/v1"
            specs.append(ChildSpec("model-server", [python, "-m", "core.cli", "serve", "--host", options.host,
                                                    "--port", str(options.server_port)],
                                   url=f"{base}/v1 (metrics {base}/metrics)"))
        else:
            say("model-server: skipped (`dsv serve` is not part of this checkout)")

    env = {"KAFKA_BOOTSTRAP": bootstrap, "DSV_SERVER_URL": server_url, "DSV_HOME": str(settings.home),
           "PYTHONUNBUFFERED": "1", **options.extra_env}
    for app in options.apps:
        if options.services:
            if (app, "service") in commands:
                ports = APP_SERVICES[app]
                argv = [python, "-m", "core.cli", app, "service"]
                url = None
                if ports.host_flag:
                    argv += ["--host", options.host]
                if ports.port_flag:
                    argv += [ports.port_flag, str(ports.port)]
                    url = f"http://{options.host}:{ports.port}{ports.url_path}"
                # Each app is its own tenant on the server: <APP>_API_KEY, as in docker-compose.yml.
                key = os.environ.get(f"{app.upper()}_API_KEY")
                app_env = {**env, "DSV_API_KEY": key} if key else env
                specs.append(ChildSpec(f"{app}-service", argv, env=app_env, cwd=REPO_ROOT, url=url))
            else:
                say(f"{app}-service: skipped (`dsv {app} service` is not part of this checkout)")
        if options.dashboards:
            script = REPO_ROOT / "apps" / app / "dashboard.py"
            if script.exists():
                port = options.dashboard_port + APPS.index(app)
                specs.append(ChildSpec(
                    f"{app}-dashboard",
                    [python, "-m", "streamlit", "run", str(script.relative_to(REPO_ROOT)),
                     "--server.port", str(port), "--server.address", options.host,
                     "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                    env=env, cwd=REPO_ROOT, url=f"http://{options.host}:{port}"))
            else:
                say(f"{app}-dashboard: skipped (apps/{app}/dashboard.py is not part of this checkout)")
    return specs


def _kafka_answers(bootstrap: str, wait_for_kafka) -> bool:
    try:
        wait_for_kafka(bootstrap, timeout=1.0)
    except TimeoutError:
        return False
    return True


def ensure_model(settings: Settings, say=print) -> None:
    """Build deepseek-tiny under DSV_HOME if the model layer offers it and it is missing."""
    try:
        build = importlib.import_module("core.model.build")
    except ModuleNotFoundError:
        say("model: core.model.build is not part of this checkout; not building deepseek-tiny")
        return
    path = build.ensure_default_model(settings, report=lambda line: say(f"model: {line}"))
    say(f"model: serving {path}")


def cmd_run(args, settings: Settings) -> int:
    from shared.supervisor import RestartPolicy, Supervisor

    apps = tuple(a.strip() for a in args.only.split(",") if a.strip()) if args.only else APPS
    unknown = [a for a in apps if a not in APPS]
    if unknown:
        print(f"error: --only: unknown app(s) {', '.join(unknown)} (choose from {', '.join(APPS)})",
              file=sys.stderr)
        return 2
    options = StackOptions(apps=apps, server=not args.no_server, services=not args.no_services,
                           dashboards=not args.no_dashboards, host=args.host, server_port=args.server_port,
                           kafka_port=args.kafka_port, dashboard_port=args.dashboard_port)
    settings.home.mkdir(parents=True, exist_ok=True)
    if options.server and not args.no_build:
        ensure_model(settings)
    specs = plan_stack(settings, options, available_commands())
    if not specs:
        print("nothing to start")
        return 0
    supervisor = Supervisor(specs, settings.home / "run", stop_grace=args.stop_grace, out=sys.stdout,
                            policy=RestartPolicy(initial_backoff=1.0, max_backoff=30.0, stable_after=30.0))
    supervisor.install_signal_handlers()

    print(f"starting {len(specs)} processes (logs under {supervisor.log_dir}); Ctrl-C stops them all")

    def announce() -> None:
        width = max(len(s.name) for s in specs)
        print("\nlocal stack is up:")
        for spec in specs:
            where = spec.url or f"no network endpoint; log {supervisor.log_dir / (spec.name + '.log')}"
            print(f"  {spec.name:<{width}}  {where}")
        print(f"status: {supervisor.status_path}\n", flush=True)

    code = supervisor.run(on_started=announce)
    print("all services stopped")
    return code


# -- dsv release --------------------------------------------------------------------------------

def run_tests_with_coverage(test_paths: list[str], sources: list[str],
                            pytest_args: list[str]) -> tuple[int, float | None]:
    """Run pytest under coverage in a child process; returns (exit code, total % covered or None)."""
    with tempfile.TemporaryDirectory(prefix="dsv-release-") as tmp:
        report = Path(tmp) / "coverage.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *[f"--cov={s}" for s in sources], "--cov-report=term:skip-covered",
               f"--cov-report=json:{report}", *pytest_args, *test_paths]
        print("$ " + " ".join(cmd), flush=True)
        code = subprocess.call(cmd, cwd=REPO_ROOT)
        if not report.exists():
            return code, None
        return code, float(json.loads(report.read_text())["totals"]["percent_covered"])


def run_evaluation_gate(adapters: list[str] | None, data: str | None,
                        settings: Settings) -> tuple[bool, list[str]]:
    """The fine-tuning layer's promotion gate (core/evaluation/gate.py) on each adapter to release.

    ``adapters`` None means every registered adapter whose ``challenger`` is not yet the champion.
    Returns (all passed, one report line per adapter). A challenger that passes is promoted, exactly as
    `dsv promote` does: the release ships the champions."""
    from core.evaluation.gate import CHALLENGER, CHAMPION, adapter_name, promote
    from core.registry import Registry
    from shared.io import InputError

    registry = Registry.from_settings(settings)
    if adapters is None:
        adapters = []
        for model in registry.models():
            if not model.startswith("adapter-"):
                continue
            challenger, champion = registry.get_alias(model, CHALLENGER), registry.get_alias(model, CHAMPION)
            if challenger is not None and (champion is None or champion.version != challenger.version):
                adapters.append(adapter_name(model))
        if not adapters:
            return True, ["no challenger adapter pending: the current champions are released unchanged"]
    passed, lines = True, []
    for name in adapters:
        try:
            decision = promote(registry, name, data=data, adapters_dir=settings.adapters_dir)
        except InputError as exc:
            passed = False
            lines.append(f"{name}: {exc}")
            continue
        passed &= decision.promoted
        lines.append(decision.report())
    return passed, lines


def cmd_release(args, settings: Settings) -> int:
    reasons: list[str] = []
    code, covered = run_tests_with_coverage(args.tests or ["tests"], args.cov_source, args.pytest_arg or [])
    if code != 0:
        reasons.append(f"tests failed (pytest exit code {code})")
    if covered is None:
        reasons.append("no coverage report was produced")
    elif covered < args.cov_min:
        reasons.append(f"coverage of {', '.join(args.cov_source)} is {covered:.1f}% < required {args.cov_min:g}%")
    else:
        print(f"coverage of {', '.join(args.cov_source)}: {covered:.1f}% (required {args.cov_min:g}%)")
    if reasons:
        # Promoting adapters is a side effect; never do it for a build that already failed.
        reasons.append("evaluation gate not run: tests and coverage must pass first")
    else:
        passed, lines = run_evaluation_gate(args.adapter, args.data, settings)
        print("evaluation gate:\n" + "\n".join("  " + line for line in lines))
        if not passed:
            reasons.append("evaluation gate refused (both BLEU-4 and ROUGE-L must improve on the champion): "
                           + "; ".join(line.splitlines()[0] for line in lines))
    if reasons:
        print("\nRELEASE REFUSED:")
        for reason in reasons:
            print(f"  - {reason}")
        return 1
    print("\nRELEASE APPROVED: tests pass, coverage and evaluation gate met")
    return 0


# -- registration -------------------------------------------------------------------------------

def cmd_webhook(args, settings: Settings) -> int:
    from shared.webhook import serve_webhook

    # The admin key stays out of argv (visible in `ps`): environment only, like the server's keys.
    server_url = getattr(args, "server_url", settings.server_url)
    return serve_webhook(host=args.host, port=args.port, server_url=server_url,
                         admin_key=os.environ.get("DSV_ADMIN_KEY"))


def register(subparsers) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    run = subparsers.add_parser(
        "run", formatter_class=fmt,
        help="start the local stack (broker, model server, app services, dashboards) as processes",
        description="Start the whole stack on this machine without Docker: the embedded Kafka broker "
                    "(unless KAFKA_BOOTSTRAP is set), the model server, each app's service and Streamlit "
                    "dashboard. Crashed processes are restarted with backoff; Ctrl-C or SIGTERM stops "
                    "everything. Logs and status.json live under DSV_HOME/run/.")
    run.add_argument("--only", help="comma-separated apps to start (default: all four)")
    run.add_argument("--no-dashboards", action="store_true", help="do not start the Streamlit dashboards")
    run.add_argument("--no-services", action="store_true", help="do not start the app services")
    run.add_argument("--no-server", action="store_true", help="do not start the model server")
    run.add_argument("--no-build", action="store_true", help="do not build deepseek-tiny when it is missing")
    run.add_argument("--host", default="127.0.0.1", help="interface every service listens on")
    run.add_argument("--server-port", type=int, default=8000, help="model server port")
    run.add_argument("--kafka-port", type=int, default=9092, help="embedded broker port")
    run.add_argument("--dashboard-port", type=int, default=8501, help="first dashboard port (one per app)")
    run.add_argument("--stop-grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    run.set_defaults(func=cmd_run, _parser=run)

    release = subparsers.add_parser(  # defaults written into each help text (some mean "all")
        "release",
        help="release gate: tests with coverage, then the evaluation gate; refuses unless both pass",
        description="Run the test suite under coverage (of core/ and apps/ by default) and the "
                    "evaluation gate of the fine-tuning layer. Exit 0 only when the tests pass, coverage "
                    "reaches --cov-min and the gate approves; otherwise print every reason and exit 1.")
    release.add_argument("tests", nargs="*", help="test paths (default: tests)")
    release.add_argument("--cov-min", type=float, default=85.0,
                         help="required total coverage, percent (default: 85)")
    release.add_argument("--cov-source", nargs="+", default=["core", "apps"],
                         help="packages or directories measured (default: core apps)")
    release.add_argument("--pytest-arg", action="append",
                         help="extra pytest argument (repeatable), e.g. --pytest-arg=-x")
    release.add_argument("--adapter", action="append", default=None,
                         help="adapter to gate, e.g. finance (repeatable; default: every adapter whose "
                              "challenger is not the champion yet)")
    release.add_argument("--data", default=None, help="evaluate challenger and champion on this JSONL now "
                                                      "(default: their end-of-training evaluations)")
    release.set_defaults(func=cmd_release, _parser=release)

    hook = subparsers.add_parser(
        "webhook", formatter_class=fmt,
        help="Alertmanager webhook receiver that puts the model server into degrade mode",
        description="Receive Alertmanager webhooks; alerts labelled action=degrade switch the model "
                    "server's degrade mode on while firing and off once resolved (POST /admin/degrade "
                    "with the admin key from DSV_ADMIN_KEY).")
    hook.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    hook.add_argument("--port", type=int, default=9095, help="port Alertmanager posts to (path /alerts)")
    hook.add_argument("--server-url", default=argparse.SUPPRESS,
                      help="model server base URL, with or without /v1 (default: DSV_SERVER_URL)")
    hook.set_defaults(func=cmd_webhook, _parser=hook)
