"""`dsv model build`: corpus -> tokenizer -> pre-trained deepseek-tiny on disk, tracked and registered.

The directory lands atomically (built in a temporary sibling, verified by loading it back with the
same ``load_model`` every server uses, then renamed), and the registry version is created inside that
same window and rolled back if the rename fails: a killed or failed build leaves neither a half model
nor a registry entry pointing at nothing. The MLflow run of a failed build stays, marked FAILED.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from core.model.corpus import Corpus, CorpusSpec, generate_corpus
from core.model.copying import CopyWarmupConfig, CopyWarmupResult, copy_warmup
from core.model.pretrain import (PretrainConfig, PretrainResult, add_copy_blocks, frequent_tokens, pack_token_stream,
                                 pretrain)
from shared.io import InputError, atomic_path

log = logging.getLogger(__name__)

MODEL_NAME = "deepseek-tiny"
EXPERIMENT = "deepseek-tiny-build"

# Greedy generations logged with every build so a reviewer can see domain text, not noise.
SAMPLE_PROMPTS = [
    ("finance", "Explain the risk decision for this transaction. Transaction TX-120931: CNY 18,400 at a "
                "jewellery merchant in Dubai via card-not-present online payment, hour 03, new device: yes, "
                "transactions in last 10 min: 4, cardholder city: Chengdu."),
    ("finance", "请解释这笔交易的风险判断。交易TX-552013：在上海的超市商户通过POS终端消费230元，时间14点，新设备：否，"
                "近十分钟交易笔数：1，持卡人常住地：上海。"),
    ("medical", "Write the impression for these findings. Chest CT, 67-year-old, 30 pack-years. A 12 mm solid "
                "nodule in the right upper lobe with spiculated margins. No pleural effusion."),
    ("medical", "请根据以下所见写出印象。胸部CT，患者58岁，吸烟0包年。左肺下叶见一4毫米实性结节，边缘光滑。"),
    ("manufacturing", "What maintenance do you advise? Gearbox G-07: vibration RMS went from 2.1 to 4.2 mm/s "
                      "over 5 days (normal 1.5-2.8 mm/s), trend rising fast."),
    ("manufacturing", "请给出维护建议。离心泵P-12：轴承温度在7天内由50°C变为66°C（正常范围45-62°C），趋势持续上升。"),
    ("legal", "Dongfang Machinery Ltd. delivered the steel pipes 12 days late. Is it liable to Huaxin Trading Co.?"),
    ("legal", "瑞丰食品公司迟延20天交付纺织面料，是否应向恒泰建设公司承担责任？"),
]


@dataclass(frozen=True)
class BuildPreset:
    """Everything that decides the model: corpus size, tokenizer, widths, training schedule."""

    name: str
    corpus: CorpusSpec
    vocab_size: int
    pretrain: PretrainConfig
    model_overrides: dict = field(default_factory=dict)
    sample_tokens: int = 64
    copy_warmup: CopyWarmupConfig | None = None   # attention-only copy-block training first (core/model/copying.py)


PRESETS = {
    # The real default: sized to finish within ~10 minutes on 2 shared CPU cores (docs/benchmarks/model.md).
    # Small batches, many updates: on templated domain text more optimizer steps per token learn faster.
    "default": BuildPreset("default", CorpusSpec(), 8000, PretrainConfig(steps=360, batch_size=4, seq_len=256)),
    # A model that copies from its prompt (induction heads), for answers that quote their evidence: MLA's
    # key/value latent as wide as the hidden state (held at its random init during the warm-up), a copy-block
    # warm-up with the MLPs off whose alphabet doubles from 64 to 4,096 tokens as each width is copied, then
    # pre-training at the rate copying survives, copy blocks over the same 4,096 tokens mixed in (over 512 the
    # rarer ones are forgotten), on 512-token blocks with repeats up to 463 tokens back (log-uniform gaps):
    # heads pre-trained on 256-token blocks copy nothing from 200 tokens back, and a legal prompt is 420-560
    # tokens long. About 80 minutes on 2 CPU cores. Experimental: the heads formed in one seed of two, and the
    # language-model loss is worse than the default's (docs/benchmarks/model.md, "Copying, sessions 21-22").
    "copying": BuildPreset("copying", CorpusSpec(), 8000,
                           PretrainConfig(steps=1000, batch_size=4, seq_len=512, lr=1e-3, copy_share=0.2,
                                          copy_alphabet=4096, copy_max_gap=463, copy_log_gaps=True),
                           model_overrides=dict(kv_lora_rank=256), copy_warmup=CopyWarmupConfig(widen_to=4096)),
    # Same code path, toy sizes: a full build in seconds, for tests and smoke checks.
    "test": BuildPreset(
        "test", CorpusSpec(cases_per_domain=30, prc_statute_articles=20, eu_statute_articles=5), 700,
        PretrainConfig(steps=24, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=4, log_every=4),
        model_overrides=dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                             num_hidden_layers=2, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                             qk_nope_head_dim=16, v_head_dim=16, max_position_embeddings=256),
        sample_tokens=8),
}


@dataclass
class BuildResult:
    path: Path
    version: int
    run_id: str
    pretrain: PretrainResult
    seconds: float
    samples: list[dict]
    copy_warmup: CopyWarmupResult | None = None


def tokenize_corpus(corpus: Corpus, tokenizer) -> list[list[int]]:
    """Documents as BOS text EOS; chats through the DeepSeek chat template (which adds BOS / EOS)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    docs = tokenizer(corpus.documents, add_special_tokens=False)["input_ids"]
    rendered = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in corpus.chats]
    chats = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return [[bos, *ids, eos] for ids in docs] + chats


def generate_samples(model, tokenizer, max_new_tokens: int, prompts=SAMPLE_PROMPTS) -> list[dict]:
    import torch

    samples = []
    for domain, prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        reply = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        samples.append({"domain": domain, "prompt": prompt, "reply": reply})
    return samples


def save_checkpoint(model, tokenizer, directory: Path, info: dict) -> None:
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    (directory / "build_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")


def weights_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def build_model(settings, *, preset: str | BuildPreset = "default", seed: int = 0, steps: int | None = None,
                out: Path | None = None, progress: bool = True, registry=None,
                report: Callable[[str], None] = log.info, copy_share: float | None = None,
                device: str | None = None, lr: float | None = None,
                copy_warmup_steps: int | None = None) -> BuildResult:
    """Build, save (atomically), track and register a pre-trained deepseek-tiny; returns what happened.
    ``copy_share``, ``device`` and ``lr`` override the preset's pre-training (``PretrainConfig``);
    ``copy_warmup_steps`` the preset's copy warm-up (0: none)."""
    if isinstance(preset, str) and preset not in PRESETS:
        raise InputError(f"unknown build preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if copy_share is not None and not 0.0 <= copy_share < 1.0:
        raise InputError(f"--copy-share must be in [0, 1) (a share of the training blocks), got {copy_share}")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if lr is not None and not 0.0 < lr < 1.0:
        raise InputError(f"--lr must be a learning rate in (0, 1), got {lr}")
    if copy_warmup_steps is not None and copy_warmup_steps < 0:
        raise InputError(f"--copy-warmup-steps must be 0 (none) or more, got {copy_warmup_steps}")
    if device is not None:
        _check_device(device)
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    if copy_warmup_steps is not None:
        spec = replace(spec, copy_warmup=replace(spec.copy_warmup or CopyWarmupConfig(), steps=copy_warmup_steps)
                       if copy_warmup_steps else None)
    overrides = {k: v for k, v in (("copy_share", copy_share), ("device", device), ("lr", lr)) if v is not None}
    if overrides:
        spec = replace(spec, pretrain=replace(spec.pretrain, **overrides))
    with _transformers_progress_bars(progress):
        return _build(settings, spec, seed, steps, out, progress, registry, report)


def _check_device(device: str) -> None:
    """Refuse a device this machine lacks before minutes of corpus and tokenizer work, not after."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise InputError(f"--device {device!r} is not a torch device ({exc})") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device on this machine (torch {torch.__version__})")


@contextlib.contextmanager
def _transformers_progress_bars(enabled: bool):
    """Silence transformers' own "Loading weights" / "Writing shards" bars when ours is off (logs, tests)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _build(settings, spec: BuildPreset, seed: int, steps: int | None, out: Path | None, progress: bool,
           registry, report: Callable[[str], None]) -> BuildResult:
    import torch

    from core.model.loading import load_model
    from core.model.tiny import build_untrained
    from core.model.tokenizer import train_bpe_tokenizer
    from core.registry import Registry

    train_config = replace(spec.pretrain, seed=seed, steps=steps or spec.pretrain.steps)
    corpus_spec = replace(spec.corpus, seed=seed)
    out = Path(out or settings.default_model_dir)
    registry = registry or Registry.from_settings(settings)
    started = time.perf_counter()

    report(f"generating the bilingual domain corpus (seed {seed})")
    corpus = generate_corpus(corpus_spec)
    report(f"training a {spec.vocab_size}-token byte-level BPE tokenizer on {corpus.stats['characters']:,} characters")
    tokenizer = train_bpe_tokenizer(corpus.tokenizer_texts(), vocab_size=spec.vocab_size)
    blocks = pack_token_stream(tokenize_corpus(corpus, tokenizer), train_config.seq_len)
    corpus_tokens = blocks.numel()
    warmup_config = replace(spec.copy_warmup, seed=seed) if spec.copy_warmup else None
    warmup_symbols = (frequent_tokens(blocks, max(warmup_config.alphabet, warmup_config.widen_to),
                                      tokenizer.all_special_ids) if warmup_config else None)
    blocks, labels = add_copy_blocks(blocks, train_config, tokenizer.bos_token_id, tokenizer.all_special_ids)
    model = build_untrained(tokenizer, seed=seed, **spec.model_overrides)
    n_params = sum(p.numel() for p in model.parameters())
    copies = f" + {blocks.numel() - corpus_tokens:,} in copy blocks" if blocks.numel() > corpus_tokens else ""
    report(f"pre-training {n_params / 1e6:.1f}M parameters for {train_config.steps} steps on "
           f"{corpus_tokens:,} corpus tokens{copies} ({train_config.device})")

    params = {"preset": spec.name, "seed": seed, "vocab_size": len(tokenizer), "parameters": n_params,
              "corpus_tokens": corpus_tokens, **{f"corpus.{k}": v for k, v in asdict(corpus_spec).items()},
              **train_config.as_params(), **(warmup_config.as_params() if warmup_config else {}),
              **{f"model.{k}": v for k, v in model.config.to_diff_dict().items()
                                             if isinstance(v, (int, float, str, bool))}}
    with registry.start_run(EXPERIMENT, f"{spec.name}-seed{seed}", params) as run:
        warmup = None
        if warmup_config:
            widening = (f", doubled each time it is copied up to {warmup_config.widen_to}"
                        if warmup_config.widen_to else "")
            report(f"copy warm-up: up to {warmup_config.steps} steps on copy blocks over the {warmup_config.alphabet} "
                   f"most frequent tokens{widening}, MLPs off for the first {warmup_config.mlp_off_steps}")

            def log_warmup(step: int, metrics: dict) -> None:
                run.log_metrics({f"copy_warmup.{k}": v for k, v in metrics.items()}, step=step)
                if not progress:  # the bar shows these; without it (logs) one line per evaluation
                    report(f"copy warm-up step {step}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))

            warmup = copy_warmup(model, warmup_symbols, tokenizer.bos_token_id, warmup_config,
                                 device=train_config.device, progress=progress, on_log=log_warmup)
            report(f"copy warm-up: {warmup.steps} steps in {warmup.seconds:.0f}s, held-out copy loss "
                   f"{warmup.final['copy_loss']}, next token right {warmup.final['copy_right']}")
        result = pretrain(model, blocks, train_config, labels=labels, progress=progress,
                          on_log=lambda step, metrics: run.log_metrics(metrics, step=step))
        samples = generate_samples(model, tokenizer, spec.sample_tokens)
        run.log_dict(samples, "samples.json")
        run.log_dict(corpus.stats, "corpus_stats.json")
        info = {"model": MODEL_NAME, "preset": spec.name, "seed": seed, "steps": train_config.steps,
                "parameters": n_params, "lr": train_config.lr, "copy_share": train_config.copy_share,
                "initial_loss": result.initial_loss, "final_loss": result.final_loss,
                "tokens_seen": result.tokens_seen, "copy_warmup": _warmup_info(warmup), "corpus": corpus.stats, "mlflow_run_id": run.run_id,
                "torch": torch.__version__, "python": platform.python_version()}
        version = _land_and_register(registry, model, tokenizer, out, info, run.run_id)
        seconds = time.perf_counter() - started
        run.log_metrics({"final_loss": result.final_loss, "initial_loss": result.initial_loss,
                         "tokens_per_second": result.tokens_per_second, "train_seconds": result.seconds,
                         "build_seconds": seconds, "expert_imbalance": result.expert_imbalance,
                         "load_seconds": load_model(out).load_seconds})
    report(f"built {out} (version {version}, alias champion) in {seconds:.0f}s: loss "
           f"{result.initial_loss:.2f} -> {result.final_loss:.2f}")
    return BuildResult(out, version, run.run_id, result, seconds, samples, warmup)


def _warmup_info(warmup: CopyWarmupResult | None) -> dict | None:
    if warmup is None:
        return None
    return {"steps": warmup.steps, "seconds": round(warmup.seconds, 1), "widened": warmup.widened,
            **{k: v for k, v in warmup.final.items() if k != "step"}}


def _land_and_register(registry, model, tokenizer, out: Path, info: dict, run_id: str) -> int:
    from core.model.loading import load_model

    previous = registry.get_alias(MODEL_NAME, "champion")
    version = None
    try:
        with atomic_path(out, is_dir=True) as tmp:
            save_checkpoint(model, tokenizer, tmp, info)
            # mkdtemp makes the directory private (0700); a model is meant to be read by the server's
            # user too (containers), so give it ordinary permissions before it lands.
            tmp.chmod(0o755)
            for file in tmp.iterdir():
                file.chmod(0o644)
            load_model(tmp)  # never land a checkpoint the servers could not load
            tags = {"preset": info["preset"], "seed": info["seed"], "weights_sha256": weights_digest(tmp)}
            # Registered while the files are still in the temporary directory: the rename below is the
            # only step left, and a failure there rolls the version back.
            version = registry.register(MODEL_NAME, out, run_id, tags=tags, check_path=False)
            registry.set_alias(MODEL_NAME, "champion", version)
    except BaseException:
        if version is not None:
            registry.delete_version(MODEL_NAME, version)
            if previous is not None:
                registry.set_alias(MODEL_NAME, "champion", previous.version)
        raise
    return version


def build_default_model(settings, seed: int = 0, steps: int | None = None, progress: bool = True,
                        preset: str = "default", out: Path | None = None) -> Path:
    return build_model(settings, preset=preset, seed=seed, steps=steps, out=out, progress=progress).path


def ensure_default_model(settings, report: Callable[[str], None] = print, progress: bool = True,
                         preset: str = "default") -> Path:
    """Return the default model directory, building it first only if it is missing or unloadable."""
    from core.model.loading import check_checkpoint_dir
    from core.registry import Registry

    path = settings.default_model_dir
    try:
        check_checkpoint_dir(path)
    except InputError as exc:
        report(f"deepseek-tiny not ready ({exc}); building it (about 10 minutes on 2 CPU cores)")
        return build_model(settings, preset=preset, progress=progress, report=report).path
    registry = Registry.from_settings(settings)
    champion = registry.get_alias(MODEL_NAME, "champion")
    if champion is None or champion.path != path.resolve():
        # A model copied in by hand (or a wiped MLflow store): register what is there.
        tags = {"origin": "found on disk", "weights_sha256": weights_digest(path)}
        build_info = path / "build_info.json"
        if build_info.exists():  # built elsewhere by `dsv model build`: keep its provenance
            built = json.loads(build_info.read_text(encoding="utf-8"))
            tags.update({f"build.{k}": built[k] for k in ("preset", "seed", "steps", "final_loss", "mlflow_run_id")
                         if k in built})
        version = registry.register(MODEL_NAME, path, None, tags=tags)
        registry.set_alias(MODEL_NAME, "champion", version)
        report(f"deepseek-tiny found at {path}; registered it as version {version} (champion)")
    else:
        report(f"deepseek-tiny found at {path} (registry version {champion.version}, champion); nothing to build")
    return path
