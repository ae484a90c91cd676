"""The real server driven by the official ``openai`` client: models, chat, streaming, completions."""
from __future__ import annotations

import openai
import pytest


@pytest.fixture
def finance_client(model_server):
    return openai.OpenAI(base_url=model_server.base_url, api_key=model_server.api_keys["finance"], max_retries=0)


def test_models_lists_base_and_own_adapters(model_server, finance_client):
    ids = [m.id for m in finance_client.models.list()]
    assert ids[0] == "deepseek-tiny"
    assert "finance" in ids
    assert "legal" not in ids and "medical" not in ids  # other verticals' adapters are not offered
    admin = openai.OpenAI(base_url=model_server.base_url, api_key=model_server.api_keys["admin"])
    assert {"finance", "medical", "manufacturing", "legal"} <= {m.id for m in admin.models.list()}


def test_chat_completion_greedy_is_deterministic_and_counts_usage(finance_client):
    messages = [{"role": "system", "content": "You review transactions."},
                {"role": "user", "content": "Is a 5000 EUR transfer at 3am suspicious?"}]
    first = finance_client.chat.completions.create(model="finance", messages=messages, max_tokens=12, temperature=0)
    second = finance_client.chat.completions.create(model="finance", messages=messages, max_tokens=12, temperature=0)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.object == "chat.completion"
    assert 1 <= first.usage.completion_tokens <= 12
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert first.choices[0].finish_reason in ("length", "stop")


def test_adapter_changes_the_output(model_server):
    client = openai.OpenAI(base_url=model_server.base_url, api_key=model_server.api_keys["admin"])
    messages = [{"role": "user", "content": "CT shows a 6 mm solid nodule."}]
    outputs = {model: client.chat.completions.create(model=model, messages=messages, max_tokens=10,
                                                     temperature=0).choices[0].message.content
               for model in ("deepseek-tiny", "finance", "medical")}
    assert len(set(outputs.values())) == 3, outputs  # each (random, non-zero) LoRA really applied


def test_seeded_sampling_is_reproducible(finance_client):
    def sample(seed):
        return finance_client.chat.completions.create(
            model="deepseek-tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=16,
            temperature=1.0, top_p=0.9, seed=seed).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_streaming_equals_non_streaming(finance_client):
    messages = [{"role": "user", "content": "The transaction was flagged because"}]
    full = finance_client.chat.completions.create(model="finance", messages=messages, max_tokens=16, temperature=0)
    stream = finance_client.chat.completions.create(model="finance", messages=messages, max_tokens=16,
                                                    temperature=0, stream=True,
                                                    stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completion_stop_string_cuts_the_text(finance_client):
    prompt = "According to Article 577 of the Civil Code"
    free = finance_client.completions.create(model="deepseek-tiny", prompt=prompt, max_tokens=16, temperature=0)
    text = free.choices[0].text
    assert len(text) >= 4
    stop = text[2:4]
    cut = finance_client.completions.create(model="deepseek-tiny", prompt=prompt, max_tokens=16,
                                            temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in finance_client.completions.create(
        model="deepseek-tiny", prompt=prompt, max_tokens=16, temperature=0, stop=[stop], stream=True))
    assert streamed == cut.choices[0].text
