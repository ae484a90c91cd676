"""LoRA fine-tuning recipe: config validation, data, mixer, back-translation, training on the tiny model."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from core.finetune.config import load_config, parse_config
from core.finetune.data import load_chat_jsonl, tokenize_record
from core.finetune.mixer import apportion, mix_records
from core.finetune.synthetic import synthetic_records, write_synthetic_set
from shared.io import InputError
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "core/finetune/configs/lora_tiny.yaml"


def _config(base: Path, data: dict, **sections) -> dict:
    raw = {"adapter_name": "t", "base_model": str(base), "registry": False,
           "optimizer": {"_component_": "torch.optim.AdamW", "lr": 0.01},
           "data": {"max_length": 128, **data},
           "training": {"batch_size": 4, "grad_accum": 2, "log_every": 5, "checkpoint_every": 1000}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    return write_synthetic_set(tmp_path_factory.mktemp("demo"), n_train=64, n_val=12, seed=1)


# -- config --------------------------------------------------------------------------------------


def test_example_config_defaults_are_the_reference_settings(tmp_path):
    config = load_config(EXAMPLE, home=tmp_path)
    assert config.peft.component == "lora"
    assert config.peft.kwargs == {"r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "bias": "none",
                                  "target_modules": ["q_a_proj", "q_b_proj", "kv_b_proj"]}
    assert config.optimizer.kwargs["lr"] == 5e-5
    t = config.training
    assert (t.batch_size, t.grad_accum, t.epochs, t.log_every) == (8, 4, 3, 50)
    assert config.data.train == f"{tmp_path}/data/demo/train.jsonl"  # ${DSV_HOME} expanded


@pytest.mark.parametrize("override, message", [
    ("training.epoch=2", "unknown key 'training.epoch'"),
    ("optimizer.learning_rate=0.1", "unknown key 'optimizer.learning_rate'"),
    ("peft._component_=qlora9", "unknown PEFT method 'qlora9'"),
    ("peft.rank=4", "unknown key 'peft.rank'"),
    ("training.batch_size=0", "training.batch_size"),
    ("optimizer.params=1", "optimizer.params is set by the recipe"),
])
def test_bad_config_key_is_named_with_the_file(tmp_path, override, message):
    with pytest.raises(InputError) as err:
        load_config(EXAMPLE, [override], home=tmp_path)
    assert message in str(err.value) and "lora_tiny.yaml" in str(err.value)


def test_mix_section_with_unknown_key_is_named(tmp_path):
    raw = {"adapter_name": "x", "data": {"train": {"sources": {"a": "a.jsonl"}, "ratio": {"a": 1}, "totl": 3}}}
    with pytest.raises(InputError, match=r"unknown key 'data\.train\.totl'"):
        parse_config(raw, "cfg.yaml")


# -- data ------------------------------------------------------------------------------------------


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(synthetic_records(1)[0])
    path.write_text(good + "\n\n" + good + "\n{not json\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.jsonl:4"):
        load_chat_jsonl(path)
    path.write_text(good + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:2: messages\[0\]\.role"):
        load_chat_jsonl(path)


def test_labels_cover_only_assistant_tokens(tiny_tokenizer, tmp_path):
    record = load_chat_jsonl(write_synthetic_set(tmp_path, 1, 1)["train"])[0]
    example = tokenize_record(tiny_tokenizer, record, max_length=512)
    learned = [t for t in example.labels if t != -100]
    answer = record.messages[-1]["content"]
    assert tiny_tokenizer.decode(learned, skip_special_tokens=True) == answer
    assert learned[-1] == tiny_tokenizer.eos_token_id  # the model learns to stop
    assert len(learned) < len(example.input_ids)



def test_truncation_that_cuts_the_answer_end_is_reported(tiny_tokenizer, tmp_path, caplog):
    from core.finetune.data import tokenize_records

    records = load_chat_jsonl(write_synthetic_set(tmp_path, 2, 1)["train"])
    full = tokenize_record(tiny_tokenizer, records[0], max_length=512)
    assert not full.answer_cut and full.full_length == len(full.input_ids)
    short = len(full.input_ids) - 2  # keeps most of the answer, loses its end and the EOS
    cut = tokenize_record(tiny_tokenizer, records[0], max_length=short)
    assert cut.answer_cut and tiny_tokenizer.eos_token_id not in cut.labels
    with caplog.at_level("WARNING", logger="core.finetune.data"):
        tokenize_records(tiny_tokenizer, records, max_length=short)
    assert "lose the end of their answer" in caplog.text


# -- mixer -----------------------------------------------------------------------------------------


def test_mixer_meets_ratio_deterministically_and_reports_real_counts(tmp_path):
    from core.finetune.data import ChatRecord

    def source(tag, n):
        return [ChatRecord([{"role": "user", "content": f"{tag}{i}"}, {"role": "assistant", "content": "a"}], tag)
                for i in range(n)]
    sources = {"general": source("g", 40), "domain": source("d", 90), "adversarial": source("a", 7)}
    ratio = {"general": 3, "domain": 5, "adversarial": 2}
    mix = mix_records(sources, ratio, total=50, seed=3)
    assert mix.counts == {"general": 15, "domain": 25, "adversarial": 10}
    assert mix.repeated == ["adversarial"]  # 7 available, 10 needed: repeated and reported
    assert [r.messages[0]["content"] for r in mix.records] == \
        [r.messages[0]["content"] for r in mix_records(sources, ratio, total=50, seed=3).records]
    auto = mix_records(sources, ratio, seed=3)  # largest total without repeats: limited by adversarial
    assert auto.counts["adversarial"] <= 7 and not auto.repeated
    assert sum(apportion(7, {"a": 1, "b": 1, "c": 1}).values()) == 7


# -- back-translation ------------------------------------------------------------------------------


class _TranslatorStubHandler(BaseHTTPRequestHandler):
    """OpenAI chat-completions shape; 'translates' by tagging the language (a real translator cannot run offline)."""

    requests: ClassVar[list[str]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        type(self).requests.append(prompt)
        header, _, text = prompt.partition("\n\n")
        language = header.split(" into ")[1].split(".")[0]
        if language in ("English", "Chinese"):  # back: strip the pivot tag and paraphrase a word
            out = text.split("] ", 1)[-1].replace("payment", "transfer").replace("交易", "转账")
        else:
            out = f"[{language}] {text}"
        reply = {"id": "stub", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": out}}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def offline_translator_stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TranslatorStubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_back_translation_through_an_openai_compatible_endpoint(offline_translator_stub, tmp_path):
    from core.client import ModelClient
    from core.finetune.backtranslate import BackTranslator, back_translate

    records = load_chat_jsonl(write_synthetic_set(tmp_path, 4, 1, domains=("finance",))["train"])
    translator = BackTranslator(ModelClient(offline_translator_stub), "deepseek-tiny", pivots=("fr", "de"))
    result = back_translate(records, translator)
    assert result.per_pivot == {"fr": 4, "de": 4}
    pivots_asked = {p.split(" into ")[1].split(".")[0] for p in _TranslatorStubHandler.requests}
    assert {"French", "German"} <= pivots_asked
    by_origin = {r.origin: r for r in records}
    for para in result.records:  # the user turn is paraphrased; the trusted answer is kept verbatim
        original = by_origin[para.origin.rsplit("#", 1)[0]]
        assert para.messages[-1] == original.messages[-1]
        assert "transfer" in para.messages[1]["content"] or "转账" in para.messages[1]["content"]
    assert {p.messages[1]["content"] for p in result.records}.isdisjoint({r.messages[1]["content"] for r in records})


# -- training --------------------------------------------------------------------------------------


def test_unknown_target_module_lists_the_real_linear_names(tiny_model_dir, demo_set, tmp_path):
    from core.finetune.recipe import run_finetune

    raw = _config(tiny_model_dir, {"train": str(demo_set["train"])},
                  peft={"_component_": "lora", "target_modules": ["q_proj", "v_proj"]})
    with pytest.raises(InputError, match=r"'q_proj', 'v_proj'.*kv_b_proj.*q_b_proj"):
        run_finetune(parse_config(raw), Settings(home=tmp_path), progress=False)
    assert not (tmp_path / "adapters").exists()  # nothing half-written

    raw["peft"] = {"_component_": "lora", "target_modules": ["kv_b_proj", "down_proj"], "lora_dropout": 0.1}
    with pytest.raises(InputError, match=r"fused MoE expert weights.*lora_dropout: 0"):
        run_finetune(parse_config(raw), Settings(home=tmp_path), progress=False)


def test_curriculum_trains_loss_falls_and_saves_a_peft_adapter(tiny_model_dir, demo_set, tmp_path):
    import torch
    from peft import PeftModel

    from core.finetune.recipe import run_finetune
    from core.model.loading import load_model
    from core.registry import Registry
    from shared.settings import load_settings

    settings = load_settings()  # the session's DSV_HOME (MLflow store shared with the other tests)
    mix = {"sources": {"general": str(demo_set["val"]), "domain": str(demo_set["train"])},
           "ratio": {"general": 3, "domain": 5}, "total": 64}
    raw = _config(tiny_model_dir, {"val": str(demo_set["val"])}, adapter_name="curriculum-test", registry=True,
                  merge=True,
                  peft={"_component_": "lora", "target_modules": ["q_b_proj", "kv_b_proj", "o_proj", "lm_head"]},
                  curriculum=[{"name": "synthetic", "data": mix, "epochs": 2},
                              {"name": "real", "data": str(demo_set["val"]), "epochs": 3}],
                  evaluation={"generate": False})
    result = run_finetune(parse_config(raw), settings, progress=False)

    assert [s.name for s in result.stages] == ["synthetic", "real"]
    assert result.stages[0].mix_counts == {"general": 24, "domain": 40}  # 3:5 of 64
    assert [s.steps for s in result.stages] == [16, 6]  # 64/4/2 * 2 epochs; 12/4 -> 3 micro -> 2 steps * 3
    losses = [loss for _, loss in result.loss_history]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert result.stages[0].eval_loss < result.initial_eval_loss  # loss falls on held-out data
    assert 0 < result.trainable_share < 0.5

    tracked = Registry.from_settings(settings).run_metrics(result.run_id)
    assert tracked["trainable_share"] == pytest.approx(result.trainable_share)
    assert tracked["synthetic_mix_count_general"] == 24
    assert tracked["real_eval_loss"] == pytest.approx(result.stages[1].eval_loss)

    adapter = Path(result.adapter_dir)
    assert adapter == settings.adapters_dir / "curriculum-test"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    reloaded = PeftModel.from_pretrained(load_model(tiny_model_dir).model, str(adapter))
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    assert sum(p.numel() for n, p in reloaded.named_parameters() if "lora_" in n) == result.trainable_params

    merged = load_model(result.merged_dir).model  # --merge: a full checkpoint equal to base + adapter
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reloaded.eval()(ids).logits, rtol=1e-4, atol=1e-4)


def test_back_translation_through_the_real_model_server(model_server, tmp_path):
    """The same augmenter against our real server (untrained tiny model: the text is noise, the plumbing
    and the accounting are what is checked; a real translator is only a different base URL)."""
    from core.client import ModelClient
    from core.finetune.backtranslate import BackTranslator, back_translate

    records = load_chat_jsonl(write_synthetic_set(tmp_path, 2, 1, domains=("legal",))["train"])
    client = ModelClient(model_server.base_url, model_server.api_keys["admin"])
    result = back_translate(records, BackTranslator(client, "deepseek-tiny", pivots=("fr", "de"), max_tokens=12))
    assert len(result.records) + result.dropped_unchanged + result.dropped_empty == 4
    assert sum(result.per_pivot.values()) == len(result.records)
    for para in result.records:
        assert para.messages[-1]["role"] == "assistant" and para.messages[1]["role"] == "user"
