"""`dsv release`: tests under coverage, then the evaluation gate; refuses unless both pass.

The suite is never run inside the suite: the release runs a one-test selection (a real pytest child
process under pytest-cov), and the gate runs on a real MLflow registry in a temporary DSV_HOME with
versions whose end-of-training metrics are logged the way `dsv finetune` logs them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from core.cli import main
from shared.ops_cli import run_evaluation_gate
from shared.settings import Settings


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A DSV_HOME of this module's own, so its registry holds only the versions made here."""
    home = tmp_path_factory.mktemp("release_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSV_HOME", str(home))
        yield home


def register_version(registry, tmp_path: Path, adapter: str, bleu4: float, rouge_l: float) -> int:
    files = tmp_path / "store" / f"{adapter}-{bleu4}"
    files.mkdir(parents=True)
    (files / "adapter_config.json").write_text('{"r": 4}')
    (files / "marker.txt").write_text(f"bleu {bleu4}")
    with registry.start_run("finetune", adapter, {"eval.val_sha256": "same-validation-file"}) as run:
        run.log_metrics({"bleu4": bleu4, "rougeL": rouge_l})
    return registry.register(f"adapter-{adapter}", files, run.run_id)


@pytest.fixture(scope="module")
def registry(home):
    """finance: champion v1, challenger v2 worse on ROUGE-L. legal: challenger v2 better on both."""
    from core.registry import Registry

    reg = Registry.from_settings(Settings())
    for adapter, challenger in (("finance", (12.0, 0.29)), ("legal", (15.0, 0.41))):
        v1 = register_version(reg, home, adapter, 10.0, 0.30)
        reg.set_alias(f"adapter-{adapter}", "champion", v1)
        v2 = register_version(reg, home, adapter, *challenger)
        reg.set_alias(f"adapter-{adapter}", "challenger", v2)
    return reg


def tiny_test(tmp_path: Path, passing: bool) -> str:
    path = tmp_path / f"test_tiny_{'pass' if passing else 'fail'}.py"
    path.write_text("from core.evaluation.gate import compare\n\n"
                    "def test_compare():\n"
                    f"    assert compare({{'bleu4': 2, 'rougeL': 1}}, None)[0].improved is {passing}\n")
    return str(path)


# A narrow coverage source keeps each release run to seconds; the default is core and apps.
NARROW = ["--cov-source", "core/evaluation"]


def test_failing_tests_and_low_coverage_refuse_without_running_the_gate(home, tmp_path, capfd):
    code = main(["release", tiny_test(tmp_path, passing=False), "--cov-min", "85", *NARROW])
    out = capfd.readouterr().out
    assert code == 1
    assert "RELEASE REFUSED" in out
    assert "tests failed (pytest exit code 1)" in out
    assert "coverage of core/evaluation is" in out and "< required 85%" in out
    assert "evaluation gate not run" in out


def test_gate_refusal_refuses_the_release_and_says_why(registry, tmp_path, capfd):
    code = main(["release", tiny_test(tmp_path, passing=True), "--cov-min", "0", *NARROW, "--adapter", "finance"])
    out = capfd.readouterr().out
    assert code == 1
    assert "coverage of core/evaluation:" in out          # coverage met (threshold 0)
    assert "adapter-finance: version 2 REFUSED" in out
    assert "rougeL: challenger 0.2900 vs champion 0.3000 -> NOT improved" in out
    assert "RELEASE REFUSED" in out and "evaluation gate refused" in out
    assert registry.get_alias("adapter-finance", "champion").version == 1


def test_gate_promotes_an_improved_challenger_and_publishes_it(registry):
    settings = Settings()
    passed, lines = run_evaluation_gate(["legal"], None, settings)
    assert passed, lines
    assert "PROMOTED" in lines[0]
    assert registry.get_alias("adapter-legal", "champion").version == 2
    assert (settings.adapters_dir / "legal" / "marker.txt").read_text() == "bleu 15.0"

    # Only finance is still pending (and refused); an unknown adapter is a refusal, not a crash.
    passed, lines = run_evaluation_gate(None, None, settings)
    assert not passed and len(lines) == 1 and lines[0].startswith("adapter-finance")
    passed, lines = run_evaluation_gate(["contracts"], None, settings)
    assert not passed and "no 'challenger' alias" in lines[0]
