"""The Dockerfiles (no engine here to build them): multi-stage shape, every COPY source exists and is
not excluded by .dockerignore, the final stages carry no toolchain, and the code they call exists."""
from __future__ import annotations

import ast
import fnmatch
import re

import pytest

DOCKERFILES = ["docker/Dockerfile.cpu", "docker/Dockerfile.cuda"]


def stages(text: str) -> dict[str, dict]:
    """stage name -> {"base": image or stage, "lines": instructions} (continuations joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out: dict[str, dict] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if match:
            current = match.group(2)
            out[current] = {"base": match.group(1), "lines": []}
        elif current:
            out[current]["lines"].append(line)
    return out


def dockerignored(repo, path: str) -> bool:
    ignored = False
    for pattern in (repo / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").replace("**/", "")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_layout(repo, dockerfile):
    found = stages((repo / dockerfile).read_text())
    assert list(found) == ["build", "weights", "app", "model-server"]
    assert found["weights"]["base"] == "build" and found["model-server"]["base"] == "app"
    # The runtime stage starts from a fresh small base, not from the build stage or a devel image.
    assert found["app"]["base"] != "build" and "devel" not in found["app"]["base"]
    runtime = " ".join(found["app"]["lines"] + found["model-server"]["lines"])
    assert "build-essential" not in runtime
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    # The model image takes only the weights from the weights stage.
    assert [l for l in found["model-server"]["lines"] if "--from=" in l] == \
        ["COPY --from=weights --chown=10001 /data/models /data/models"]
    assert "USER 10001" in runtime


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_build_context(repo, dockerfile):
    for line in stages((repo / dockerfile).read_text())["build"]["lines"]:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (repo / source).exists(), f"{dockerfile}: COPY {source}: missing"
                assert not dockerignored(repo, source), f"{dockerfile}: COPY {source} is excluded by .dockerignore"


def test_dockerignore_keeps_state_and_secrets_out(repo):
    for path in (".venv", "var", ".git", ".env", "tests"):
        assert dockerignored(repo, path), path
    assert not dockerignored(repo, ".env.example")


def test_the_weights_stage_calls_existing_code(repo):
    for dockerfile in DOCKERFILES:
        text = (repo / dockerfile).read_text()
        assert "from core.model.build import ensure_default_model" in text
    # Parsed, not imported: the module pulls in torch.
    tree = ast.parse((repo / "core/model/build.py").read_text())
    assert "ensure_default_model" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
