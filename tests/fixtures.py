"""Fixtures shared by several test areas: a tiny model on disk and a real Kafka-protocol broker.

(Area-only fixtures stay in ``tests/<area>/conftest.py``.)
"""
from __future__ import annotations

import pytest

from shared.net import free_port

SAMPLE_TEXTS = [
    "The transaction was flagged because the amount was far above the account's usual spending.",
    "该交易因金额远高于账户日常消费水平而被标记为可疑。",
    "CT shows a 6 mm solid nodule in the right upper lobe. No lymphadenopathy.",
    "胸部CT示右肺上叶6毫米实性结节，无淋巴结肿大。",
    "Bearing vibration RMS has risen steadily for three days; schedule an inspection.",
    "轴承振动有效值连续三天上升，建议安排检修。",
    "According to Article 577 of the Civil Code, the breaching party shall bear liability.",
    "根据《民法典》第五百七十七条，违约方应当承担违约责任。",
] * 40


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from core.model.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(SAMPLE_TEXTS, vocab_size=600)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """An untrained deepseek-tiny (real DeepseekV3ForCausalLM, small widths) saved as a checkpoint dir."""
    from core.model.tiny import build_untrained

    path = tmp_path_factory.mktemp("models") / "deepseek-tiny-test"
    model = build_untrained(tiny_tokenizer, seed=0, hidden_size=64, intermediate_size=128,
                            moe_intermediate_size=32, num_hidden_layers=2, q_lora_rank=32,
                            kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)
    model.save_pretrained(str(path))
    tiny_tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real Kafka-protocol broker process (noida-db) on a free loopback port for the session."""
    from shared.broker import EmbeddedBroker

    broker = EmbeddedBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


# --- model server (added by the serving area) -------------------------------------------------------

SERVER_TENANTS = ("admin", "finance", "medical", "manufacturing", "legal")
SERVER_ADAPTERS = ("finance", "medical", "manufacturing", "legal")
SERVED_BASE_NAME = "deepseek-tiny"  # the base model's id, as in production (DSV_HOME/models/deepseek-tiny)


def make_lora_adapter(base_dir, out_dir, seed: int = 0, rank: int = 4) -> None:
    """Save an untrained (random, non-zero) PEFT LoRA adapter on the MLA projections of ``base_dir``."""
    make_lora_adapters(base_dir, {out_dir: seed}, rank=rank)


def make_lora_adapters(base_dir, seeds_by_dir: dict, rank: int = 4) -> None:
    """Several untrained adapters from one base load (one per ``{out_dir: seed}``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
    # init_lora_weights=False: B is random too, so each adapter really changes the output (a test
    # can tell an adapter was applied); a trained adapter comes from `dsv finetune`.
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, init_lora_weights=False,
                        target_modules=["q_b_proj", "kv_b_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    for out_dir, seed in seeds_by_dir.items():
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
        model.save_pretrained(str(out_dir))


class ModelServerProcess:
    """A real ``dsv serve`` subprocess on a free loopback port."""

    def __init__(self, base_url, api_keys, adapters_dir, process, log_path):
        self.base_url = base_url          # ends in /v1
        self.api_keys = api_keys          # tenant -> key
        self.adapters_dir = adapters_dir
        self.process = process
        self.log_path = log_path

    @property
    def root_url(self) -> str:
        return self.base_url[: -len("/v1")]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def start_model_server(tmp_dir, model_dir, *, adapters=SERVER_ADAPTERS, extra_args=(), ready_timeout=180.0):
    """Start ``python -m core.cli serve`` and wait for /ready; returns a ``ModelServerProcess``."""
    import os
    import secrets
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    tmp_dir = Path(tmp_dir)
    adapters_dir = tmp_dir / "adapters"
    adapters_dir.mkdir(parents=True, exist_ok=True)
    missing = {adapters_dir / name: seed for seed, name in enumerate(adapters, start=1)
               if not (adapters_dir / name / "adapter_config.json").exists()}
    if missing:
        make_lora_adapters(model_dir, missing)
    api_keys = {tenant: f"sk-{tenant}-{secrets.token_hex(8)}" for tenant in SERVER_TENANTS}
    keys_file = tmp_dir / "api_keys.txt"
    keys_file.write_text("".join(f"{key}:{tenant}\n" for tenant, key in api_keys.items()))
    port = free_port()
    log_path = tmp_dir / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("DSV_API_KEYS", None)
    command = [sys.executable, "-m", "core.cli", "serve", "--model", str(model_dir),
               "--adapters-dir", str(adapters_dir), "--host", "127.0.0.1", "--port", str(port),
               "--api-keys-file", str(keys_file), "--served-model-name", SERVED_BASE_NAME, *extra_args]
    repo_root = Path(__file__).resolve().parent.parent
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=repo_root, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ModelServerProcess(f"http://127.0.0.1:{port}/v1", api_keys, adapters_dir, process, log_path)
    deadline = time.monotonic() + ready_timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"model server exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.root_url}/ready", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_model_server(server)
            raise RuntimeError(f"model server not ready after {ready_timeout}s:\n{server.log_tail()}")
        time.sleep(0.2)


def stop_model_server(server) -> None:
    import subprocess

    if server.process.poll() is None:
        server.process.terminate()  # SIGTERM: uvicorn drains and exits
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def model_server(tmp_path_factory, tiny_model_dir):
    """A real model server (``dsv serve``) on loopback: tiny base model + four untrained LoRA adapters.

    Yields an object with ``.base_url`` (ends in /v1), ``.api_keys`` (tenant -> key for admin,
    finance, medical, manufacturing, legal), ``.adapters_dir`` and ``.process``. Model ids:
    "deepseek-tiny" (the base), "finance", "medical", "manufacturing", "legal".
    """
    server = start_model_server(tmp_path_factory.mktemp("model_server"), tiny_model_dir)
    yield server
    stop_model_server(server)
