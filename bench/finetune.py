"""Benchmark: the LoRA recipe vs a plain ``transformers.Trainer`` + PEFT run of the same config.

Both arms train the same base (deepseek-tiny, DeepSeek-V3 architecture), the same LoRA (the product's
reference settings: r=16, alpha=32, dropout 0.1, q_a/q_b/kv_b targets), AdamW lr 5e-5, per-device
batch 8, grad accumulation 4, on the same SYNTHETIC domain chat set for the same number of whole
epochs, one thread each. Each arm runs in its own child process (spawned by this one run) so its
peak resident memory (``ru_maxrss``) is its own. Throughput = real (non-pad) tokens trained / training
wall time (data loading included; model loading and evaluation excluded).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/finetune.py [--base DIR] [--records 256] [--epochs 2]

Prints one JSON object with both arms and the ratios (recipe / Trainer).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.1, "bias": "none",
        "target_modules": ["q_a_proj", "q_b_proj", "kv_b_proj"]}
BATCH, ACCUM, LR, MAX_LENGTH = 8, 4, 5e-5, 256


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def prepare(workdir: Path, base: str | None, records: int) -> tuple[Path, Path]:
    """A base checkpoint (given, or an untrained deepseek-tiny of the default preset) and the data."""
    from core.finetune.synthetic import synthetic_records, write_synthetic_set

    data = write_synthetic_set(workdir / "data", n_train=records, n_val=8, seed=0)["train"]
    if base:
        return Path(base), data
    from core.model.tiny import build_untrained
    from core.model.tokenizer import train_bpe_tokenizer

    texts = [m["content"] for r in synthetic_records(2000, seed=5) for m in r["messages"]]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=8000)
    model = build_untrained(tokenizer, seed=0)  # the deepseek-tiny preset (7.5 M parameters at 8k vocab)
    path = workdir / "deepseek-tiny-untrained"
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path, data


def arm_recipe(base: Path, data: Path, epochs: int, workdir: Path, queue) -> None:
    import torch
    torch.set_num_threads(1)
    from core.finetune.config import parse_config
    from core.finetune.recipe import run_finetune
    from shared.settings import Settings

    config = parse_config({
        "adapter_name": "bench", "base_model": str(base), "registry": False,
        "output_dir": str(workdir / "recipe-adapter"), "checkpoint_dir": str(workdir / "recipe-ckpt"),
        "peft": {"_component_": "lora", **LORA},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": LR},
        "data": {"train": str(data), "max_length": MAX_LENGTH},
        # No mid-run checkpoints: the Trainer arm saves none either.
        "training": {"batch_size": BATCH, "grad_accum": ACCUM, "epochs": epochs, "log_every": 50,
                     "checkpoint_every": 10**9},
    })
    result = run_finetune(config, Settings(home=workdir / "home"), progress=False)
    queue.put({"arm": "recipe", "steps": result.steps, "tokens_per_second": result.tokens_per_second,
               "trainable_share": result.trainable_share,
               "final_loss": result.loss_history[-1][1], "peak_rss_mib": _peak_rss_mib()})


def arm_trainer(base: Path, data: Path, epochs: int, workdir: Path, queue) -> None:
    import torch
    torch.set_num_threads(1)
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from core.finetune.data import load_chat_jsonl, tokenize_records
    from core.model.loading import load_model

    loaded = load_model(base)
    tokenizer = loaded.tokenizer
    tokenizer.padding_side = "right"
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, LoraConfig(task_type=TaskType.CAUSAL_LM, **LORA))
    # Same tokenisation (assistant-only labels) so both arms learn the same thing from the same tokens.
    examples = tokenize_records(tokenizer, load_chat_jsonl(data), MAX_LENGTH)
    dataset = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
               for e in examples]
    args = TrainingArguments(
        output_dir=str(workdir / "trainer-out"), per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUM, learning_rate=LR, num_train_epochs=epochs, logging_steps=50,
        save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        lr_scheduler_type="linear", warmup_steps=0, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its summary dict; stdout is our JSON
        output = trainer.train()
    seconds = time.perf_counter() - started
    tokens = epochs * sum(len(e.input_ids) for e in examples)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    queue.put({"arm": "trainer", "steps": output.global_step, "tokens_per_second": tokens / seconds,
               "final_loss": losses[-1] if losses else output.training_loss, "peak_rss_mib": _peak_rss_mib()})


def run_arm(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _median(results: list[dict]) -> dict:
    out = dict(results[0])
    for key in ("tokens_per_second", "peak_rss_mib"):
        out[key] = statistics.median(r[key] for r in results)
    out["runs"] = len(results)
    out["tokens_per_second_all"] = [round(r["tokens_per_second"], 1) for r in results]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None, help="base checkpoint (default: build an untrained deepseek-tiny)")
    parser.add_argument("--records", type=int, default=256, help="SYNTHETIC training records")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the arms alternately (A B B A ...) this many times each; medians reported")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        workdir = Path(tmp)
        base, data = prepare(workdir, args.base, args.records)
        runs: dict[str, list[dict]] = {"recipe": [], "trainer": []}
        arms = {"recipe": arm_recipe, "trainer": arm_trainer}
        for i in range(args.repeats):  # alternate the order so drifting machine load hits both arms
            for name in (("trainer", "recipe") if i % 2 == 0 else ("recipe", "trainer")):
                runs[name].append(run_arm(arms[name], base, data, args.epochs, workdir))
    recipe, trainer = (_median(runs["recipe"]), _median(runs["trainer"]))
    print(json.dumps({
        "benchmark": "finetune", "data": f"SYNTHETIC domain chat, {args.records} records x {args.epochs} epochs",
        "base": str(args.base or "untrained deepseek-tiny preset"),
        "config": {"lora": LORA, "batch": BATCH, "grad_accum": ACCUM, "lr": LR, "threads": 1},
        "recipe": recipe, "trainer": trainer,
        "ratio_tokens_per_second": recipe["tokens_per_second"] / trainer["tokens_per_second"],
        "ratio_peak_rss": recipe["peak_rss_mib"] / trainer["peak_rss_mib"],
    }, indent=2))


if __name__ == "__main__":
    main()
