"""LoRA fine-tuning recipe (torchtune spirit: one readable script, driven by a validated YAML config).

Python entry:  ``run_finetune(config: FinetuneConfig, settings=None) -> FinetuneResult``
Command line:  ``dsv finetune --config FILE.yaml [key=value ...]``   (``torchrun --nproc_per_node N -m
               core.cli finetune ...`` runs the same code under DDP; gloo on CPU)

What happens, in order:
 1. load the base checkpoint (``core.model.loading``) and wrap it with the configured PEFT method;
 2. build each curriculum stage's data (a JSONL file or a ratio mix), tokenised with assistant-only labels;
 3. train stage by stage (AdamW, grad accumulation, linear schedule), logging loss / lr / tokens/s to
    MLflow, writing an atomic resumable checkpoint every ``checkpoint_every`` optimizer steps;
 4. after each stage: eval loss on ``data.val``; at the end: BLEU-4 / ROUGE-L by greedy generation;
 5. save the adapter in standard PEFT format (atomically), register it as ``adapter-<name>`` with
    alias ``challenger``; optionally write the merged full model.
Only rank 0 writes files and talks to MLflow.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.finetune.checkpoint import (
    CHECKPOINT_FILE,
    config_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from core.finetune.config import FinetuneConfig, MixConfig, instantiate
from core.finetune.data import (
    ChatDataset,
    ChatRecord,
    collate,
    load_chat_jsonl,
    tokenize_records,
)
from core.finetune.distributed import Dist, init_distributed, resolve_device
from shared.io import InputError, atomic_path, write_text_atomic
from shared.settings import Settings, load_settings

log = logging.getLogger(__name__)

EXPERIMENT = "finetune"


@dataclass
class StageReport:
    name: str
    records: int
    epochs: int
    steps: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    eval_loss: float | None = None
    mix_counts: dict[str, int] | None = None


@dataclass
class FinetuneResult:
    adapter_name: str
    adapter_dir: Path | None
    steps: int
    stages: list[StageReport]
    loss_history: list[tuple[int, float]]
    trainable_params: int
    total_params: int
    tokens_per_second: float
    resumed_from_step: int | None = None
    initial_eval_loss: float | None = None
    """Validation loss of base + fresh adapter before any step (the reference "loss falls" is against)."""
    eval_metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    registered_version: str | None = None
    merged_dir: Path | None = None

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / max(self.total_params, 1)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["trainable_share"] = self.trainable_share
        return json.loads(json.dumps(out, default=str))


# ---------------------------------------------------------------------------------------------------
# Helpers


def resolve_paths(config: FinetuneConfig, settings: Settings) -> tuple[Path, Path, Path]:
    base = Path(config.base_model) if config.base_model else settings.default_model_dir
    out = Path(config.output_dir) if config.output_dir else settings.adapters_dir / config.adapter_name
    ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir else settings.home / "checkpoints" / config.adapter_name
    return base, out, ckpt


def load_stage_records(source: str | MixConfig, seed: int) -> tuple[list[ChatRecord], dict[str, int] | None]:
    if isinstance(source, MixConfig):
        from core.finetune.mixer import mix_files
        mix = mix_files(source.sources, source.ratio, total=source.total, seed=seed)
        return mix.records, mix.counts
    return load_chat_jsonl(source), None


def flat_params(config: FinetuneConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else value
    walk("", config.model_dump(mode="json", by_alias=True))
    return out


def steps_per_epoch(n_records: int, batch_size: int, grad_accum: int, world_size: int) -> int:
    micro_batches = math.ceil(math.ceil(n_records / world_size) / batch_size)
    return math.ceil(micro_batches / grad_accum)


def _accumulation_groups(loader, size: int):
    """Yield lists of ``size`` consecutive micro-batches (the last one may be shorter)."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def model_device(model):
    return next(model.parameters()).device


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _accumulate_gradients(train_model, group: list[dict], dist: Dist) -> tuple[float, int]:
    """Forward/backward each micro-batch of one optimizer step; returns (mean loss, real tokens).

    Under DDP the gradient all-reduce runs only on the last micro-batch (``no_sync`` before it)."""
    loss_sum, tokens = 0.0, 0
    for j, batch in enumerate(group):
        last = j == len(group) - 1
        with train_model.no_sync() if dist.enabled and not last else contextlib.nullcontext():
            loss = train_model(**_to(batch, model_device(train_model))).loss / len(group)
            loss.backward()
        loss_sum += loss.item()
        tokens += int(batch["attention_mask"].sum())
    return loss_sum, tokens


class _NoRun:
    """Stands in for the MLflow run on ranks > 0 (and when registration is off and no tracking wanted)."""

    run_id = None

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_params(self, params: dict) -> None:
        pass

    def set_tags(self, tags: dict) -> None:
        pass

    def log_artifact(self, path) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# The recipe


def evaluate_loss(model, dataset: ChatDataset, batch_size: int, pad_id: int, dist: Dist) -> float:
    """Token-weighted mean loss over ``dataset`` (each rank takes a shard; averaged across ranks)."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    indices = range(dist.rank, len(dataset), dist.world_size)
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = collate([dataset[i] for i in indices[start:start + batch_size]], pad_id)
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**_to(batch, model_device(model))).loss) * n
            tokens += n
    model.train()
    return dist.mean(total / max(tokens, 1))


def run_finetune(config: FinetuneConfig, settings: Settings | None = None, *, progress: bool = True) -> FinetuneResult:
    """Train, save, evaluate and register one adapter (see the module docstring)."""
    device = resolve_device(config.training.device)
    dist = init_distributed(device)
    try:
        return _run(config, settings or load_settings(), dist, device, progress)
    finally:
        if dist.enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _run(config: FinetuneConfig, settings: Settings, dist: Dist, device: str, progress: bool) -> FinetuneResult:
    import torch
    from peft import get_peft_model
    from torch.utils.data import DataLoader, DistributedSampler
    from tqdm import tqdm

    from core.model.loading import load_model

    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    base_dir, output_dir, checkpoint_dir = resolve_paths(config, settings)
    tcfg = config.training

    # 1. model + PEFT --------------------------------------------------------------------------------
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    loaded = load_model(base_dir, device=device)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id
    peft_config = instantiate("peft", config.peft, model=loaded.model)
    try:
        model = get_peft_model(loaded.model, peft_config)
    except ValueError as exc:  # PEFT's refusal of a combination (e.g. a layer type it cannot wrap)
        raise InputError(f"peft ({config.peft.component}): {exc}") from None
    model.train()
    trainable, total = model.get_nb_trainable_parameters()
    if dist.is_main:
        log.info("trainable parameters: %d of %d (%.3f%%)", trainable, total, 100 * trainable / total)

    # 2. data ----------------------------------------------------------------------------------------
    stages = config.stages()
    stage_data: list[ChatDataset] = []
    reports: list[StageReport] = []
    for i, stage in enumerate(stages):
        records, mix_counts = load_stage_records(stage.data, config.seed + i)
        stage_data.append(ChatDataset(tokenize_records(tokenizer, records, config.data.max_length)))
        reports.append(StageReport(stage.name, len(stage_data[-1]), stage.epochs or tcfg.epochs,
                                   mix_counts=mix_counts))
    val_records = load_chat_jsonl(config.data.val) if config.data.val else []
    val_data = ChatDataset(tokenize_records(tokenizer, val_records, config.data.max_length)) if val_records else None

    planned = sum(r.epochs * steps_per_epoch(r.records, tcfg.batch_size, tcfg.grad_accum, dist.world_size)
                  for r in reports)
    total_steps = min(planned, tcfg.max_steps) if tcfg.max_steps else planned

    # 3. optimizer, schedule, DDP, resume -----------------------------------------------------------
    optimizer = instantiate("optimizer", config.optimizer, params=[p for p in model.parameters() if p.requires_grad])
    scheduler = instantiate("lr_scheduler", config.lr_scheduler, optimizer=optimizer, num_training_steps=total_steps)
    train_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(model, device_ids=[model.device.index] if device != "cpu" else None)

    fingerprint = config_fingerprint(config)
    ckpt_path = checkpoint_dir / CHECKPOINT_FILE
    position = {"stage": 0, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "history": [],
                "reports": [asdict(r) for r in reports], "tokens": 0, "train_seconds": 0.0,
                "initial_eval_loss": None}
    resumed_from = None
    if tcfg.resume and ckpt_path.exists():
        position = load_checkpoint(ckpt_path, model, optimizer, scheduler, fingerprint)
        resumed_from = position["global_step"]
        reports = [StageReport(**r) for r in position["reports"]]
        if dist.is_main:
            log.info("resumed from %s at step %d (stage %s)", ckpt_path, resumed_from, reports[position["stage"]].name)

    # 4. train ---------------------------------------------------------------------------------------
    with contextlib.ExitStack() as stack:
        run = _NoRun()
        if dist.is_main and config.registry:
            from core.registry import Registry
            registry = Registry.from_settings(settings)
            run = stack.enter_context(registry.start_run(EXPERIMENT, config.adapter_name, flat_params(config)))
            if resumed_from is not None:  # the killed run's MLflow run stays as it was left
                run.set_tags({"resumed_from_step": resumed_from, "resumed_from_checkpoint": str(ckpt_path)})
            run.log_metrics({"trainable_params": trainable, "total_params": total,
                             "trainable_share": trainable / total}, step=0)
            for report in reports:
                if report.mix_counts:
                    run.log_metrics({f"{report.name}_mix_count_{k}": v for k, v in report.mix_counts.items()}, step=0)

        if resumed_from is None and val_data is not None:
            position["initial_eval_loss"] = evaluate_loss(model, val_data, tcfg.batch_size, pad_id, dist)
            run.log_metrics({"eval_loss": position["initial_eval_loss"]}, step=0)
        global_step = position["global_step"]
        history: list[tuple[int, float]] = [tuple(h) for h in position["history"]]
        tokens_seen, train_seconds = position["tokens"], position["train_seconds"]
        bar = tqdm(total=total_steps, initial=global_step, desc=f"finetune {config.adapter_name}",
                   unit="step", disable=not (progress and dist.is_main))
        done = global_step >= total_steps

        for stage_index in range(position["stage"], len(stages)):
            if done:
                break
            report, dataset = reports[stage_index], stage_data[stage_index]
            sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank,
                                         shuffle=True, seed=config.seed + stage_index)
            first_epoch = position["epoch"] if stage_index == position["stage"] else 0
            for epoch in range(first_epoch, report.epochs):
                sampler.set_epoch(epoch)
                skip = position["step_in_epoch"] if (stage_index, epoch) == (position["stage"], position["epoch"]) else 0
                order = list(sampler)[skip * tcfg.grad_accum * tcfg.batch_size:]
                # A private generator: creating a DataLoader iterator would otherwise draw from the global
                # RNG (which drives dropout), and a resumed run creates one at a different point.
                loader = DataLoader(dataset, batch_size=tcfg.batch_size, sampler=order,
                                    collate_fn=lambda b: collate(b, pad_id),
                                    generator=torch.Generator().manual_seed(config.seed))
                step_in_epoch = skip
                tick = time.perf_counter()  # training time includes data loading, not eval/checkpoints
                for group in _accumulation_groups(loader, tcfg.grad_accum):
                    loss_sum, tokens = _accumulate_gradients(train_model, group, dist)
                    tokens_seen += tokens
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    train_seconds += time.perf_counter() - tick
                    global_step += 1
                    step_in_epoch += 1
                    report.steps += 1
                    step_loss = dist.mean(loss_sum)
                    history.append((global_step, step_loss))
                    report.first_loss = step_loss if report.first_loss is None else report.first_loss
                    report.last_loss = step_loss
                    bar.update(1)
                    bar.set_postfix(stage=report.name, loss=f"{step_loss:.3f}")
                    if global_step % tcfg.log_every == 0 or global_step == total_steps:
                        run.log_metrics({"train_loss": step_loss, "lr": scheduler.get_last_lr()[0],
                                         "tokens_per_second": tokens_seen * dist.world_size / max(train_seconds, 1e-9)},
                                        step=global_step)
                        if dist.is_main:
                            log.info("step %d/%d stage %s loss %.4f", global_step, total_steps, report.name, step_loss)
                    done = global_step >= total_steps
                    if global_step % tcfg.checkpoint_every == 0 and not done:
                        # Resuming skips the micro-batches already consumed in this epoch (same seeded
                        # order); a position past the epoch's end simply yields an empty epoch.
                        checkpoint_position = {
                            "stage": stage_index, "epoch": epoch, "step_in_epoch": step_in_epoch,
                            "global_step": global_step, "history": history,
                            "reports": [asdict(r) for r in reports], "tokens": tokens_seen,
                            "train_seconds": train_seconds, "initial_eval_loss": position["initial_eval_loss"]}
                        if dist.is_main:
                            save_checkpoint(ckpt_path, model, optimizer, scheduler, checkpoint_position, fingerprint)
                        dist.barrier()
                    if done:
                        break
                    tick = time.perf_counter()
                if done:
                    break
            if val_data is not None:
                report.eval_loss = evaluate_loss(model, val_data, tcfg.batch_size, pad_id, dist)
            run.log_metrics({k: v for k, v in {f"{report.name}_train_loss": report.last_loss,
                                                f"{report.name}_eval_loss": report.eval_loss,
                                                "eval_loss": report.eval_loss}.items()
                             if v is not None}, step=global_step)
            if dist.is_main:
                log.info("stage %s: %d steps, loss %s -> %s, eval loss %s", report.name, report.steps,
                         report.first_loss, report.last_loss, report.eval_loss)
        bar.close()

        result = FinetuneResult(
            adapter_name=config.adapter_name, adapter_dir=None, steps=global_step, stages=reports,
            loss_history=history, trainable_params=trainable, total_params=total,
            tokens_per_second=tokens_seen * dist.world_size / max(train_seconds, 1e-9),
            resumed_from_step=resumed_from, initial_eval_loss=position["initial_eval_loss"], run_id=run.run_id,
        )
        if dist.is_main:
            _finish(config, settings, model, tokenizer, val_records, run, result, base_dir, output_dir)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: a re-run starts afresh
        dist.barrier()
    return result


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _register(config: FinetuneConfig, settings: Settings, output_dir: Path, run, result: FinetuneResult,
              base_dir: Path) -> int:
    """Register an immutable snapshot of the adapter (``output_dir`` is overwritten by the next run,
    a registry version must not be) as ``adapter-<name>``, alias ``challenger``."""
    from core.registry import Registry

    registry = Registry.from_settings(settings)
    name = f"adapter-{config.adapter_name}"
    snapshot = settings.home / "registry" / "adapters" / config.adapter_name / f"{int(time.time())}-{run.run_id[:8]}"
    with atomic_path(snapshot, is_dir=True) as tmp:
        shutil.copytree(output_dir, tmp, dirs_exist_ok=True)
    run.log_artifact(output_dir / "training_summary.json")
    tags = {"adapter_name": config.adapter_name, "base_model": str(base_dir),
            **{k: f"{v:.6g}" for k, v in result.eval_metrics.items()}}
    try:
        version = registry.register(name, snapshot, run.run_id, tags)
        registry.set_alias(name, "challenger", version)
    except BaseException:
        shutil.rmtree(snapshot, ignore_errors=True)
        raise
    log.info("registered %s version %s (alias challenger) -> %s", name, version, snapshot)
    return version


def _finish(config: FinetuneConfig, settings: Settings, model, tokenizer, val_records: list[ChatRecord],
            run, result: FinetuneResult, base_dir: Path, output_dir: Path) -> None:
    """Rank 0: save the adapter atomically, evaluate, register, optionally merge."""
    model.eval()
    with atomic_path(output_dir, is_dir=True) as tmp:
        model.save_pretrained(str(tmp))  # adapter_config.json + adapter_model.safetensors
        summary = {"adapter_name": config.adapter_name, "base_model": str(base_dir), "steps": result.steps,
                   "trainable_share": result.trainable_share,
                   "stages": [asdict(s) for s in result.stages], "config": config.model_dump(mode="json", by_alias=True)}
        write_text_atomic(tmp / "training_summary.json", json.dumps(summary, ensure_ascii=False, indent=2))
    result.adapter_dir = output_dir
    log.info("adapter saved to %s", output_dir)

    if val_records and config.evaluation.generate:
        from core.evaluation.metrics import evaluate_records
        scores = evaluate_records(model, tokenizer, val_records, max_new_tokens=config.evaluation.max_new_tokens,
                                  batch_size=config.evaluation.batch_size, max_records=config.evaluation.max_records)
        result.eval_metrics = scores.metrics()
        run.log_metrics(result.eval_metrics, step=result.steps)
        # The gate compares only metrics computed on the same validation file.
        run.log_params({"eval.val_sha256": file_sha256(config.data.val),
                        "eval.max_records": config.evaluation.max_records,
                        "eval.max_new_tokens": config.evaluation.max_new_tokens})
        log.info("validation: BLEU-4 %.2f  ROUGE-L %.4f", scores.bleu4, scores.rouge_l)

    run.log_metrics({"final_train_loss": result.loss_history[-1][1] if result.loss_history else float("nan"),
                     "tokens_per_second": result.tokens_per_second}, step=result.steps)
    if config.registry:
        result.registered_version = str(_register(config, settings, output_dir, run, result, base_dir))

    if config.merge:
        merged_dir = settings.models_dir / f"{config.adapter_name}-merged"
        merged = model.merge_and_unload()
        with atomic_path(merged_dir, is_dir=True) as tmp:
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        result.merged_dir = merged_dir
        log.info("merged model written to %s", merged_dir)
