"""Plain PyTorch causal-LM pre-training of deepseek-tiny on the generated corpus.

Packed sequences (documents and chats concatenated, each framed by BOS ... EOS, cut into fixed-length
blocks), AdamW with linear warm-up then cosine decay, gradient clipping, a tqdm progress bar, and
determinism under a seed (python / numpy / torch seeds, deterministic algorithms, one fixed batch order).

DeepSeek-V3's auxiliary-loss-free load balancing: the router picks experts by ``sigmoid score + bias``
where the bias (``gate.e_score_correction_bias``) is *not* learned by gradient -- after each step it is
nudged by ``gamma * sign(mean load - expert load)`` so over-used experts become less attractive. The
transformers implementation keeps the bias as a buffer and never updates it (inference only), so this
loop does the update itself with forward hooks on the routers, and reports the load imbalance.
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    steps: int = 600
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 30
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    router_bias_gamma: float = 1e-3    # DeepSeek-V3's bias update speed
    threads: int = 1
    log_every: int = 10

    def as_params(self) -> dict:
        return {f"pretrain.{k}": v for k, v in asdict(self).items()}


@dataclass
class PretrainResult:
    losses: list[tuple[int, float]] = field(default_factory=list)   # (step, mean loss since last log)
    tokens_seen: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    initial_loss: float = float("nan")
    expert_imbalance: float = float("nan")  # max/mean expert load over the last log window (1.0 = perfect)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds else 0.0


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    # warn_only: a few CPU kernels (index_add_ in the MoE) have no "deterministic" flag but are
    # deterministic on CPU in practice; the test proves it by training twice.
    torch.use_deterministic_algorithms(True, warn_only=True)


def pack_token_stream(sequences: Iterable[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate token sequences and cut them into ``[n_blocks, seq_len]`` (the remainder is dropped)."""
    flat = [tok for seq in sequences for tok in seq]
    n_blocks = len(flat) // seq_len
    if n_blocks == 0:
        raise ValueError(f"corpus too small: {len(flat)} tokens < one block of {seq_len}")
    return torch.tensor(flat[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def lr_at(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


class RouterBalancer:
    """Counts expert picks per router during a step and applies the aux-loss-free bias update."""

    def __init__(self, model, gamma: float):
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

        self.gamma = gamma
        self.routers = [m for m in model.modules() if isinstance(m, DeepseekV3TopkRouter)]
        self.loads = [torch.zeros(r.num_experts) for r in self.routers]
        self.window = [torch.zeros(r.num_experts) for r in self.routers]
        self._hooks = [r.register_forward_hook(self._hook(i)) for i, r in enumerate(self.routers)]

    def _hook(self, index: int) -> Callable:
        def record(module, inputs, outputs):
            if module.training:
                topk_indices = outputs[2]
                counts = torch.bincount(topk_indices.reshape(-1), minlength=module.num_experts).float()
                self.loads[index] += counts
        return record

    @torch.no_grad()
    def step(self) -> None:
        for router, load, window in zip(self.routers, self.loads, self.window):
            if load.sum() > 0:
                router.e_score_correction_bias += self.gamma * torch.sign(load.mean() - load)
            window += load
            load.zero_()

    def imbalance(self) -> float:
        """Max/mean expert load over the window since the last call, averaged over routers."""
        ratios = [(w.max() / w.mean()).item() for w in self.window if w.sum() > 0]
        for w in self.window:
            w.zero_()
        return float(np.mean(ratios)) if ratios else float("nan")

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def pretrain(model, blocks: torch.Tensor, config: PretrainConfig, *, progress: bool = True,
             on_log: Callable[[int, dict], None] | None = None) -> PretrainResult:
    """Train ``model`` in place on ``blocks`` ([n, seq_len] token ids) for ``config.steps`` steps."""
    from tqdm.auto import tqdm

    # Process-wide torch settings are restored afterwards: a test session or a service that builds a
    # model goes on with its own thread count and algorithm choices.
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    seed_everything(config.seed, config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=config.betas)
    balancer = RouterBalancer(model, config.router_bias_gamma)
    result = PretrainResult()
    order = torch.randperm(len(blocks), generator=generator)
    cursor, window_loss, window_steps = 0, 0.0, 0
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc="pre-training deepseek-tiny", unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
        for step in bar:
            if cursor + config.batch_size > len(order):  # next epoch, new (seeded) order
                order, cursor = torch.randperm(len(blocks), generator=generator), 0
            batch = blocks[order[cursor: cursor + config.batch_size]]
            cursor += config.batch_size
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            balancer.step()
            value = loss.item()
            if step == 0:
                result.initial_loss = value
            result.tokens_seen += batch.numel()
            window_loss, window_steps = window_loss + value, window_steps + 1
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                mean = window_loss / window_steps
                result.losses.append((step + 1, mean))
                result.expert_imbalance = balancer.imbalance()
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{result.tokens_seen / elapsed:.0f}")
                if on_log:
                    on_log(step + 1, {"loss": mean, "lr": lr_at(step, config),
                                      "expert_imbalance": result.expert_imbalance,
                                      "tokens_per_second": result.tokens_seen / elapsed})
                window_loss, window_steps = 0.0, 0
    finally:
        bar.close()
        balancer.close()
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    model.eval()
    result.seconds = time.perf_counter() - start
    result.final_loss = result.losses[-1][1] if result.losses else float("nan")
    return result
