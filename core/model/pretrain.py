"""Plain PyTorch causal-LM pre-training of deepseek-tiny on the generated corpus.

Packed sequences (documents and chats concatenated, each framed by BOS ... EOS, cut into fixed-length
blocks), AdamW with linear warm-up then cosine decay, gradient clipping, a tqdm progress bar, and
determinism under a seed (python / numpy / torch seeds, deterministic algorithms, one fixed batch order).

DeepSeek-V3's auxiliary-loss-free load balancing: the router picks experts by ``sigmoid score + bias``
where the bias (``gate.e_score_correction_bias``) is *not* learned by gradient -- after each step it is
nudged by ``gamma * sign(mean load - expert load)`` so over-used experts become less attractive. The
transformers implementation keeps the bias as a buffer and never updates it (inference only), so this
loop does the update itself with forward hooks on the routers, and reports the load imbalance.

Copy blocks (``copy_share``, off by default): a share of synthetic blocks that only copying can predict.
An answer that quotes its evidence needs a model that copies from its context (induction heads), and the
default build does not learn it: measured by ``bench/model_copy.py``, deepseek-tiny's loss on a repeated
run of tokens equals its loss on the first occurrence (docs/benchmarks/model.md, "Copying"). Induction
forms only after a plateau - more steps than 2 CPU cores give the default build, and none at all within
4,000 steps at the preset's lr 3e-3 - so these blocks are for long builds at a lower rate
(``dsv model build --steps N --copy-share S --lr 1e-3 [--device cuda]``); they are built so that no
shortcut solves them (runs of random length reappear after a random gap: no fixed offset to learn).
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
    copy_share: float = 0.0            # share of training blocks that are synthetic copy blocks (see above)
    copy_alphabet: int = 512           # copy blocks draw from this many most frequent corpus tokens
    copy_max_gap: int = 20             # random tokens between a copy run and its repeat, at most (clipped to the
                                       # block); copying reaches only as far back as it was trained to
    copy_log_gaps: bool = False        # gaps drawn log-uniformly: far repeats added, near ones still common
    latent_lr: float = 1.0             # MLA's key/value latent at lr x this (0 = held; core/model/copying.py)
    device: str = "cpu"                # "cuda" on a GPU machine; the model comes back to the CPU after

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


def copy_blocks(n_blocks: int, seq_len: int, alphabet: torch.Tensor, bos: int, generator: torch.Generator,
                min_run: int = 6, max_run: int = 24, max_gap: int = 20, with_mask: bool = False,
                log_gaps: bool = False):
    """``[n_blocks, seq_len]`` blocks of random ``alphabet`` tokens (BOS first) in which runs of
    ``min_run``..``max_run`` tokens reappear after a gap of 0..``max_gap`` random tokens. Nothing in a block
    but the earlier occurrence predicts a repeat, and the varying run length and gap leave no fixed
    position offset to learn instead (a model that learns "copy the token 8 back" from runs of exactly 8
    has learnt nothing it can use on a prompt). ``with_mask``: also a bool mask of the repeated tokens
    that copying predicts (each repeat but its first token, which nothing announces). ``log_gaps``: gaps drawn
    log-uniformly instead, so that a long ``max_gap`` adds far repeats (copying from hundreds of tokens back,
    as an answer quotes its prompt) without making the near ones rare."""
    if max_run * 2 + max_gap + 1 > seq_len:
        raise ValueError(f"seq_len {seq_len} too short for copy runs of {max_run} tokens and gaps of {max_gap}")
    pick = torch.randint(0, len(alphabet), (n_blocks, seq_len), generator=generator)
    blocks = alphabet[pick]
    blocks[:, 0] = bos
    mask = torch.zeros(n_blocks, seq_len, dtype=torch.bool)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    def draw_log_uniform(high: int) -> int:   # 0..high, each factor of e about as likely as the next
        u = float(torch.rand((1,), generator=generator))
        return min(high, int(math.exp(u * math.log(high + 1))) - 1)

    for row, repeats in zip(blocks, mask):
        pos = 1 + draw(0, 8)
        while True:
            run = draw(min_run, max_run)
            gap = draw_log_uniform(max_gap) if log_gaps else draw(0, max_gap)
            if pos + 2 * run + gap > seq_len:
                break
            row[pos + run + gap: pos + 2 * run + gap] = row[pos: pos + run].clone()
            repeats[pos + run + gap + 1: pos + 2 * run + gap] = True
            pos += 2 * run + gap + draw(0, 8)
    return (blocks, mask) if with_mask else blocks


def frequent_tokens(blocks: torch.Tensor, n: int, special_ids=()) -> torch.Tensor:
    """The ``n`` most frequent token ids of ``blocks`` other than ``special_ids`` (fewer if fewer occur)."""
    counts = torch.bincount(blocks.reshape(-1))
    for token in special_ids:
        if token is not None and token < len(counts):
            counts[token] = 0
    top = counts.argsort(descending=True)[:n]
    return top[counts[top] > 0]


def add_copy_blocks(blocks: torch.Tensor, config: PretrainConfig, bos: int,
                    special_ids=()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``blocks`` plus copy blocks making up ``config.copy_share`` of the result (shuffled in by
    ``pretrain``'s batch order), and the labels to train them with: a copy block's random tokens are
    masked out (-100), so the loss counts only what copying predicts and the model is not taught that
    random tokens are likely text. Labels are None when there are no copy blocks (labels = inputs).
    The alphabet is the corpus's ``copy_alphabet`` most frequent tokens other than ``special_ids``: tokens
    whose embeddings the corpus trains, as the words a prompt is copied from are."""
    if not 0.0 <= config.copy_share < 1.0:
        raise ValueError(f"copy_share must be in [0, 1), got {config.copy_share}")
    if config.copy_share == 0.0:
        return blocks, None
    alphabet = frequent_tokens(blocks, config.copy_alphabet, special_ids)
    n_copy = round(len(blocks) * config.copy_share / (1.0 - config.copy_share))
    generator = torch.Generator().manual_seed(config.seed + 1)
    seq_len = blocks.shape[1]
    max_run = min(24, seq_len // 4)  # short test blocks get shorter runs
    max_gap = min(config.copy_max_gap, seq_len - 2 * max_run - 1)
    copies, predictable = copy_blocks(n_copy, seq_len, alphabet, bos, generator, min_run=min(6, max_run),
                                      max_run=max_run, max_gap=max_gap, with_mask=True,
                                      log_gaps=config.copy_log_gaps)
    copy_labels = copies.masked_fill(~predictable, -100)
    return torch.cat([blocks, copies]), torch.cat([blocks, copy_labels])


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
        self.loads = [torch.zeros(r.num_experts, device=r.weight.device) for r in self.routers]
        self.window = [torch.zeros(r.num_experts, device=r.weight.device) for r in self.routers]
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


def pretrain(model, blocks: torch.Tensor, config: PretrainConfig, *, labels: torch.Tensor | None = None,
             progress: bool = True, on_log: Callable[[int, dict], None] | None = None) -> PretrainResult:
    """Train ``model`` in place on ``blocks`` ([n, seq_len] token ids) for ``config.steps`` steps;
    ``labels`` (same shape, -100 = not scored) default to the blocks themselves."""
    from tqdm.auto import tqdm

    # Process-wide torch settings are restored afterwards: a test session or a service that builds a
    # model goes on with its own thread count and algorithm choices.
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    seed_everything(config.seed, config.threads)
    model.to(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=config.betas)
    balancer = RouterBalancer(model, config.router_bias_gamma)
    latent = None
    if config.latent_lr != 1.0:
        from core.model.copying import LatentLR

        latent = LatentLR(model, optimizer, config.latent_lr)
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
            picked = order[cursor: cursor + config.batch_size]
            batch = blocks[picked].to(config.device)
            targets = batch if labels is None else labels[picked].to(config.device)
            cursor += config.batch_size
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            loss = model(input_ids=batch, labels=targets).loss
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
        if latent:
            latent.close()
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        model.to("cpu")  # sampled, saved and served on the CPU
    model.eval()
    result.seconds = time.perf_counter() - start
    result.final_loss = result.losses[-1][1] if result.losses else float("nan")
    return result
