"""BLEU-4 / ROUGE-L (Chinese included), `dsv eval`, and the promotion gate's two outcomes."""
from __future__ import annotations

import json

import pytest

from core.cli import main
from core.evaluation.metrics import MixedTokenizer, score_texts
from core.finetune.synthetic import synthetic_records
from shared.io import write_jsonl_atomic

ANSWER = "Low risk: the payment matches normal spending."


def test_chinese_text_is_scored_not_dropped():
    ref = ["低风险：交易符合日常消费。", "高风险：金额或商户与账户习惯不符。"]
    same = score_texts(ref, ref)
    assert same.bleu_tokenize == "zh" and same.bleu4 == pytest.approx(100) and same.rouge_l == pytest.approx(1)
    partial = score_texts(["低风险：交易不符合习惯。", "高风险：金额异常。"], ref)
    assert 0 < partial.rouge_l < 1 and 0 <= partial.bleu4 < 100
    tokens = MixedTokenizer().tokenize("CT示右肺上叶6毫米结节。")
    assert tokens[0] == "ct" and "6" in tokens and len(tokens) >= 5 and "".join(tokens) == "ct示右肺上叶6毫米结节"
    from rouge_score import (
        rouge_scorer,  # the default tokenizer sees nothing in Chinese: why ours exists
    )
    assert rouge_scorer.RougeScorer(["rougeL"]).score(ref[0], "低风险：交易不符合习惯。")["rougeL"].fmeasure == 0
    english = score_texts(["low risk the payment is normal"], [ANSWER])
    assert english.bleu_tokenize == "13a" and 0 < english.rouge_l < 1


@pytest.fixture(scope="module")
def controlled_data(tmp_path_factory):
    """SYNTHETIC finance prompts whose answer is always the same sentence: learnable in a few dozen steps,
    so a well-trained adapter and a barely-trained one score clearly apart."""
    root = tmp_path_factory.mktemp("gate-data")
    paths = {}
    for split, n, seed in (("train", 48, 0), ("val", 8, 99)):
        records = synthetic_records(n, seed, ("finance",))
        for r in records:
            r["messages"][-1]["content"] = ANSWER
        paths[split] = root / f"{split}.jsonl"
        write_jsonl_atomic(paths[split], records)
    return paths


def _train(base, data, *, steps: int, lr: float, targets: list[str]):
    from core.finetune.config import parse_config
    from core.finetune.recipe import run_finetune

    raw = {"adapter_name": "gate-test", "base_model": str(base), "seed": 0,
           "peft": {"_component_": "lora", "target_modules": targets, "lora_dropout": 0.0},
           "optimizer": {"_component_": "torch.optim.AdamW", "lr": lr},
           "data": {"train": str(data["train"]), "val": str(data["val"]), "max_length": 96},
           "training": {"batch_size": 8, "grad_accum": 1, "epochs": 100, "max_steps": steps, "log_every": 10},
           "evaluation": {"max_new_tokens": 16}}
    return run_finetune(parse_config(raw), progress=False)


ALL_LINEAR = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj",
              "down_proj", "lm_head"]


def test_gate_promotes_only_when_bleu_and_rouge_both_improve(tiny_model_dir, controlled_data, capsys):
    from core.registry import Registry
    from shared.settings import load_settings

    settings = load_settings()
    registry = Registry.from_settings(settings)

    barely = _train(tiny_model_dir, controlled_data, steps=1, lr=1e-5, targets=["q_b_proj", "kv_b_proj"])
    assert main(["promote", "gate-test"]) == 0  # first version: no champion, promoted
    assert "PROMOTED" in capsys.readouterr().out

    good = _train(tiny_model_dir, controlled_data, steps=40, lr=0.01, targets=ALL_LINEAR)
    assert good.eval_metrics["bleu4"] > barely.eval_metrics["bleu4"]
    assert main(["promote", "gate-test"]) == 0
    out = capsys.readouterr().out
    assert "PROMOTED" in out and out.count("-> improved") == 2
    assert registry.get_alias("adapter-gate-test", "champion").version == int(good.registered_version)

    worse = _train(tiny_model_dir, controlled_data, steps=1, lr=1e-5, targets=["q_b_proj", "kv_b_proj"])
    assert main(["promote", "gate-test"]) == 1  # refused, the two comparisons printed
    out = capsys.readouterr().out
    assert "REFUSED" in out and "bleu4: challenger" in out and "rougeL: challenger" in out
    assert "NOT improved" in out
    champion = registry.get_alias("adapter-gate-test", "champion")
    assert champion.version == int(good.registered_version)
    assert registry.get_alias("adapter-gate-test", "challenger").version == int(worse.registered_version)
    # The serving directory holds the champion again, not the refused challenger that finetune wrote there.
    served = settings.adapters_dir / "gate-test" / "adapter_model.safetensors"
    assert served.read_bytes() == (champion.path / "adapter_model.safetensors").read_bytes()

    # `dsv eval` on the champion version reproduces its end-of-training scores (greedy is deterministic).
    assert main(["eval", "--adapter", "gate-test", "--version", str(champion.version),
                 "--data", str(controlled_data["val"]), "--max-new-tokens", "16", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["bleu4"] == pytest.approx(good.eval_metrics["bleu4"])
    assert scored["rougeL"] == pytest.approx(good.eval_metrics["rougeL"])
    assert registry.run_metrics(scored["run_id"])["bleu4"] == pytest.approx(scored["bleu4"])


def test_eval_of_unknown_adapter_is_a_clear_error(tmp_path, capsys):
    val = tmp_path / "val.jsonl"
    write_jsonl_atomic(val, synthetic_records(2))
    assert main(["eval", "--adapter", "no-such-adapter", "--data", str(val)]) == 2
    assert "no-such-adapter" in capsys.readouterr().err
