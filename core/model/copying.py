"""A copy-block warm-up that gives deepseek-tiny induction heads before its ordinary pre-training.

Answers that quote their evidence need a model that copies from its prompt. Ordinary pre-training on
2 CPU cores never teaches deepseek-tiny that (``bench/model_copy.py``: its loss on a repeated run equals its
loss on the first occurrence), and neither do copy blocks mixed into it. What was measured with
``bench/induction.py`` and ``bench/mla_parts.py`` (docs/benchmarks/model.md, sessions 18-19) is what this
warm-up does, in the order found:

- two things hold copying back: the MLPs (an attention-only model forms induction heads far sooner), and
  MLA's learnt key/value latent, through which the values pass (values through a learnt latent never
  copied; held at its random init with ``kv_lora_rank`` 256 = hidden size, they do);
- so the warm-up trains on nothing but copy blocks with every MLP's output scaled to 0 for
  ``mlp_off_steps`` (``MLPGate``), then brings the MLPs in over ``mlp_ramp`` steps, with the latent held
  (``LatentLR`` at 0) throughout; afterwards the latent trains like the rest.

The loss is taken over the copy alphabet only (the lm_head's rows for those tokens): the blocks draw from
nothing else, and an 8,000-way output layer would cost two thirds of each step for no signal.

Heads formed on one fixed alphabet of 64 symbols copy those 64 and nothing else (session 20); a wide
alphabet from the start stays on the uniform plateau, and a switch, once 64 are copied, to alphabets drawn
afresh from 512 or 4,096 tokens for each batch fell back to it for 1,000 steps (session 21). So, with
``widen_to``, the alphabet grows instead: each time it is copied, the next most frequent tokens join until it
has doubled, up to ``widen_to``; the symbols already copied keep a share of every run.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from core.model.pretrain import copy_blocks


@dataclass(frozen=True)
class CopyWarmupConfig:
    steps: int = 6000                 # at most; ends early once held-out copying is right ``stop_at_right``
    mlp_off_steps: int = 3000         # attention only first
    mlp_ramp: int = 500               # then the MLPs come in linearly over this many steps
    latent_lr: float = 0.0            # MLA's key/value latent at lr x this during the warm-up (0 = held)
    lr: float = 1e-3                  # constant; copying stalls at 3e-3 (docs/benchmarks/model.md)
    batch_size: int = 16
    seq_len: int = 128
    alphabet: int = 64                # copy blocks draw from this many most frequent corpus tokens
    widen_to: int = 0                 # each time the alphabet is copied it doubles, up to this many most
                                      # frequent tokens (0: the first alphabet throughout)
    eval_every: int = 250
    stop_at_right: float = 0.9        # next token right on held-out repeats, once the MLPs are fully in
    grad_clip: float = 1.0
    seed: int = 0

    def as_params(self) -> dict:
        return {f"copy_warmup.{k}": v for k, v in asdict(self).items()}


@dataclass
class CopyWarmupResult:
    curve: list[dict] = field(default_factory=list)   # {"step", "copy_loss", "copy_right", "mlp_scale", "alphabet"}
    steps: int = 0
    widened: list[tuple[int, int]] = field(default_factory=list)   # (step, new alphabet size) at each doubling
    seconds: float = 0.0

    @property
    def final(self) -> dict:
        return self.curve[-1] if self.curve else {}


class MLPGate:
    """Scales every layer's MLP (dense or MoE) output by ``scale``: 0 for the first ``off_steps`` steps - an
    attention-only model, whose MLPs get no gradient either - then up to 1 over ``ramp`` steps."""

    def __init__(self, model, off_steps: int, ramp: int):
        layers = model.model.layers if hasattr(model, "model") else model.transformer.h
        self.off_steps, self.ramp = off_steps, max(ramp, 1)
        self.at_step(0)
        self.handles = [layer.mlp.register_forward_hook(self._scaled) for layer in layers]

    def _scaled(self, module, inputs, output):
        return output * self.scale

    def at_step(self, step: int) -> None:
        self.scale = min(1.0, max(0.0, (step - self.off_steps) / self.ramp))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class LatentLR:
    """MLA's key/value latent (the first ``kv_lora_rank`` rows of every ``kv_a_proj_with_mqa``, i.e. the
    down-projection that content keys and values share) trains at lr x ``mult`` until step ``until`` (None:
    throughout), then like the rest; 0 keeps it at its random init. The optimizer's update of those rows is
    scaled after each step, because Adam's update does not depend on the scale of a gradient."""

    def __init__(self, model, optimizer, mult: float, until: int | None = None):
        self.rows = [(layer.self_attn.kv_a_proj_with_mqa.weight, layer.self_attn.kv_lora_rank)
                     for layer in model.model.layers if hasattr(layer.self_attn, "kv_a_proj_with_mqa")]
        if not self.rows:
            raise ValueError(f"{type(model).__name__} has no MLA latent (kv_a_proj_with_mqa)")
        self.mult, self.until, self.steps, self._before = mult, until, 0, []
        self.handles = [optimizer.register_step_pre_hook(self._remember),
                        optimizer.register_step_post_hook(self._scale_update)]

    def _remember(self, optimizer, args, kwargs):
        self._before = [weight.detach()[:rows].clone() for weight, rows in self.rows]

    def _scale_update(self, optimizer, args, kwargs):
        self.steps += 1
        if self.until is not None and self.steps > self.until:
            return
        with torch.no_grad():
            for (weight, rows), before in zip(self.rows, self._before):
                weight[:rows] = before + self.mult * (weight[:rows] - before)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def alphabet_copy_loss(model, blocks: torch.Tensor, mask: torch.Tensor, alphabet: torch.Tensor):
    """Loss (a tensor) and next-token accuracy on the copy-predictable targets of ``blocks``, with the softmax
    over ``alphabet`` alone (the output layer's rows for those tokens)."""
    hidden = model.model(input_ids=blocks).last_hidden_state[:, :-1]
    predictable = mask[:, 1:]
    logits = torch.nn.functional.linear(hidden[predictable], model.lm_head.weight[alphabet])
    index_of = torch.full((int(alphabet.max()) + 1,), -1, dtype=torch.long, device=blocks.device)
    index_of[alphabet] = torch.arange(len(alphabet), device=blocks.device)
    target = index_of[blocks[:, 1:][predictable]]
    loss = torch.nn.functional.cross_entropy(logits, target)
    return loss, (logits.argmax(-1) == target).float().mean().item()


def _held_out(alphabet: torch.Tensor, bos: int, config: CopyWarmupConfig, generator, device: str):
    return tuple(t.to(device) for t in copy_blocks(32, config.seq_len, alphabet, bos, generator, with_mask=True))


def copy_warmup(model, symbols: torch.Tensor, bos: int, config: CopyWarmupConfig, *, device: str = "cpu",
                progress: bool = True, on_log: Callable[[int, dict], None] | None = None) -> CopyWarmupResult:
    """Train ``model`` (a ``DeepseekV3ForCausalLM``) in place on copy blocks as the module docstring says;
    ``symbols`` are token ids, most frequent first: the alphabet is the first ``config.alphabet`` of them,
    widened up to the first ``config.widen_to``. Returns the held-out copy curve. The model comes back to the
    CPU, in eval mode."""
    from tqdm.auto import tqdm

    if config.seq_len < 80:
        raise ValueError(f"copy warm-up seq_len {config.seq_len}: copy blocks need at least 80 tokens")
    if config.widen_to and not config.alphabet < config.widen_to <= len(symbols):
        raise ValueError(f"copy warm-up widen_to {config.widen_to}: must exceed the alphabet ({config.alphabet}) "
                         f"and not exceed the {len(symbols)} symbols given")
    model.to(device).train()
    # The alphabet is always the first ``width`` symbols: blocks are drawn from them on the CPU, the loss
    # runs over them on the device.
    symbols, symbols_on_device = symbols.cpu(), symbols.to(device)
    width, final_width = config.alphabet, max(config.alphabet, config.widen_to)
    train_gen = torch.Generator().manual_seed(config.seed)
    eval_gen = torch.Generator().manual_seed(config.seed + 99)
    held_out = _held_out(symbols[:width], bos, config, eval_gen, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    gate = MLPGate(model, config.mlp_off_steps, config.mlp_ramp)
    latent = LatentLR(model, optimizer, config.latent_lr) if config.latent_lr != 1.0 else None
    result, start = CopyWarmupResult(), time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc="copy warm-up", unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
        for step in bar:
            gate.at_step(step)
            blocks, mask = (t.to(device) for t in copy_blocks(config.batch_size, config.seq_len, symbols[:width],
                                                              bos, train_gen, with_mask=True))
            loss, _ = alphabet_copy_loss(model, blocks, mask, symbols_on_device[:width])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            result.steps = step
            if step % config.eval_every and step != config.steps:
                continue
            model.eval()
            with torch.no_grad():
                held, right = alphabet_copy_loss(model, *held_out, symbols_on_device[:width])
            model.train()
            point = {"step": step, "copy_loss": round(held.item(), 3), "copy_right": round(right, 3),
                     "mlp_scale": round(gate.scale, 3), "alphabet": width}
            result.curve.append(point)
            bar.set_postfix(copy_loss=point["copy_loss"], right=point["copy_right"], alphabet=width)
            if on_log:
                on_log(step, {k: v for k, v in point.items() if k != "step"})
            if right < config.stop_at_right:
                continue
            if width < final_width:  # copied: the next most frequent tokens join, up to double
                width = min(2 * width, final_width)
                result.widened.append((step, width))
                held_out = _held_out(symbols[:width], bos, config, eval_gen, device)
            elif gate.scale == 1.0:
                break
    finally:
        bar.close()
        gate.close()
        if latent:
            latent.close()
        model.to("cpu")
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
