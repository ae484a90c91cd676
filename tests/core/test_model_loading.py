
import pytest

from shared.io import InputError


def test_tokenizer_round_trips_chinese_and_english(tiny_tokenizer):
    for text in ["根据《民法典》第五百七十七条，违约方应当承担违约责任。", "A 6 mm nodule; 新词 unseen ☃"]:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.decode(ids) == text


def test_chat_template_is_deepseek_format(tiny_tokenizer):
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
        tokenize=False, add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜>S<｜User｜>hi<｜Assistant｜>"


def test_load_model_generates(tiny_model_dir):
    import torch

    from core.model.loading import load_model

    loaded = load_model(tiny_model_dir)
    assert type(loaded.model).__name__ == "DeepseekV3ForCausalLM"
    assert loaded.load_seconds > 0
    ids = loaded.tokenizer("hello", return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 5


@pytest.mark.parametrize("damage, expected", [
    ("no_config", "config.json: missing"),
    ("corrupt_config", "config.json: corrupt JSON"),
    ("no_weights", "no weight files"),
    ("no_tokenizer", "missing tokenizer files"),
])
def test_bad_checkpoint_names_the_file(tmp_path, tiny_model_dir, damage, expected):
    import shutil

    from core.model.loading import load_model

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    if damage == "no_config":
        (ckpt / "config.json").unlink()
    elif damage == "corrupt_config":
        (ckpt / "config.json").write_text("{not json")
    elif damage == "no_weights":
        for f in ckpt.glob("*.safetensors"):
            f.unlink()
    elif damage == "no_tokenizer":
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (ckpt / f).unlink(missing_ok=True)
    with pytest.raises(InputError, match=expected):
        load_model(ckpt)


def test_corrupt_weights_named(tmp_path, tiny_model_dir):
    import shutil

    from core.model.loading import load_model

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, ckpt)
    weights = next(ckpt.glob("*.safetensors"))
    weights.write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot load weights"):
        load_model(ckpt)
