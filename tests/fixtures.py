"""Fixtures shared by several test areas: a tiny model on disk and a real Kafka-protocol broker.

(Area-only fixtures stay in ``tests/<area>/conftest.py``.)
"""
from __future__ import annotations

import pytest

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
