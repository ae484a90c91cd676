"""The recipe survives kill -9 (re-running the command resumes) and runs unchanged under torchrun (DDP)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.finetune.synthetic import write_synthetic_set

REPO = Path(__file__).resolve().parents[2]


def _write_config(path: Path, base: Path, train: Path, out: Path, **training) -> Path:
    config = {
        "adapter_name": "resume-test", "base_model": str(base), "output_dir": str(out / "adapter"),
        "checkpoint_dir": str(out / "ckpt"), "registry": False, "seed": 7,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 0.005},
        "data": {"train": str(train), "max_length": 96},
        "training": {"batch_size": 4, "grad_accum": 1, "log_every": 100, **training},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _env(home: Path) -> dict:
    return {**os.environ, "DSV_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return write_synthetic_set(tmp_path_factory.mktemp("resume-data"), n_train=32, n_val=4, seed=2)["train"]


def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tiny_model_dir, train_file, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    from core.finetune.config import load_config
    from core.finetune.recipe import run_finetune
    from shared.settings import Settings

    out = tmp_path / "killed"
    cfg = _write_config(tmp_path / "cfg.yaml", tiny_model_dir, train_file, out,
                        epochs=4, max_steps=14, checkpoint_every=3)
    command = [sys.executable, "-m", "core.cli", "finetune", "--config", str(cfg), "--json", "--no-progress"]
    proc = subprocess.Popen(command, cwd=REPO, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = out / "ckpt" / "state.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert checkpoint.exists() and not (out / "adapter").exists()

    # Re-running the same command resumes (in this process, to spare a second interpreter start-up).
    from core.cli import main
    capsys.readouterr()
    assert main(command[3:]) == 0
    resumed = _last_json(capsys.readouterr().out)
    assert resumed["resumed_from_step"] >= 3 and resumed["steps"] == 14
    assert not checkpoint.exists()  # finished: the next run starts afresh

    # The same config run without interruption ends at the same adapter (data order, RNG, optimizer
    # and schedule state all restored).
    straight = run_finetune(load_config(_write_config(tmp_path / "cfg2.yaml", tiny_model_dir, train_file,
                                                      tmp_path / "straight", epochs=4, max_steps=14,
                                                      checkpoint_every=3)),
                            Settings(home=tmp_path), progress=False)
    a = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(Path(straight.adapter_dir) / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert [loss for _, loss in resumed["loss_history"]] == \
        pytest.approx([loss for _, loss in straight.loss_history], rel=1e-4)


def test_torchrun_two_processes_ddp(tiny_model_dir, train_file, tmp_path):
    out = tmp_path / "ddp"
    cfg = _write_config(tmp_path / "ddp.yaml", tiny_model_dir, train_file, out, epochs=1, checkpoint_every=2)
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "core.cli", "finetune", "--config", str(cfg), "--json", "--no-progress"],
        cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # only rank 0 reports
    result = json.loads(printed[0])
    # 32 records over 2 ranks = 16 each = 4 micro-batches of 4 = 4 optimizer steps (vs 8 on one process).
    assert result["steps"] == 4
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "ckpt").exists()
