"""The batching engine: one background thread that owns the model and runs every forward pass.

Continuous batching at token boundaries, with a KV cache:

* Requests wait in a bounded queue. Each loop iteration admits waiting requests into free rows of the
  running batch (up to ``max_batch``), prefills them together (left-padded) and merges their KV cache
  into the running one; then ONE decode step advances every running sequence by a token; finished or
  cancelled sequences leave the batch immediately, freeing their rows for the next iteration.
* When the engine is idle it waits up to ``max_wait`` after the first arrival so that a burst forms a
  full batch instead of a string of batch-1 prefills.
* Rows for different adapters share the pass: PEFT's ``adapter_names=`` applies each row's LoRA (the
  MLA latent cache is computed before the LoRA-targeted projections, so it is adapter-independent).
* Each row may bend its own next-token choice: ``logit_bias``, and copy-constrained quotes
  (``quote_sources``, ``core.serving.quotes``), applied to that row's logits before greedy or sampled choice.
* Scoring requests (label probabilities) are batched the same way: one full forward over all pending
  (prompt + label) sequences, no cache, no generation.

The transformers ``DynamicCache`` for DeepSeek-V3 stores compressed MLA latents per layer as
``[batch, 1, seq, dim]`` tensors; merging and shrinking batches is tensor surgery on those.
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.serving.adapters import AdapterSlot, AdapterStore
from core.serving.metrics import (BATCH_SIZE, PROMPT_TOKENS, REQUESTS_RUNNING, REQUESTS_WAITING,
                                  TIME_TO_FIRST_TOKEN, TOKENS_GENERATED)
from core.serving.quotes import QuoteConstraint, TokenBytes

log = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class QueueFull(RuntimeError):
    """The bounded queue is full: the caller should answer 429 with Retry-After."""


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 32
    max_wait_s: float = 0.01
    queue_size: int = 256
    max_score_rows: int = 256


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    quote_sources: tuple[str, ...] = ()  # quotes must copy one of these verbatim (core.serving.quotes)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit), as OpenAI's logit_bias


@dataclass
class Event:
    """What the engine reports to a request's sink: text deltas, then one final event."""

    delta: str = ""
    finish_reason: str | None = None     # "stop" | "length" | "cancelled" when final
    error: Exception | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None           # public adapter name, None = base model
    sink: Callable[[Event], None]  # called from the engine thread; must not block
    adapter_path: Path | None = None  # where the adapter resolved on acceptance
    model_label: str = "base"
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class ScoreRequest:
    prompt_ids: list[int]
    label_ids: list[list[int]]
    adapter: str | None
    future: concurrent.futures.Future  # resolves to a list of label log-probabilities
    adapter_path: Path | None = None


@dataclass
class _Sequence:
    request: GenerationRequest
    slot: AdapterSlot | None
    generator: Any
    position: int                      # position id of the next token to feed
    last_token: int
    generated: list[int] = field(default_factory=list)
    text: str = ""                     # decoded so far (incrementally, see _detokenize)
    prefix_offset: int = 0
    read_offset: int = 0
    sent_chars: int = 0
    first_token_at: float | None = None
    quotes: QuoteConstraint | None = None
    generated_bytes: bytearray = field(default_factory=bytearray)  # what the quote constraint reads


class Engine:
    """Owns the model; everything that touches it runs on the engine thread."""

    def __init__(self, model, tokenizer, adapters: AdapterStore, config: EngineConfig):
        import torch

        self.torch = torch
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.config = config
        self.model_config = model.config
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.context_length = int(getattr(model.config, "max_position_embeddings", 4096))
        self.max_wait_s = config.max_wait_s   # degrade mode lowers it at run time
        self._waiting: queue.Queue[GenerationRequest] = queue.Queue()
        self._scores: queue.Queue[ScoreRequest] = queue.Queue()
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._running: list[_Sequence] = []
        self._cache = None
        self._mask = None                     # [batch, cached_len] attention mask of the running batch
        self._step_seconds = 0.0              # moving average of a decode step (admission coalescing)
        self._token_bytes: TokenBytes | None = None  # built on the first request with quote_sources
        self._thread = threading.Thread(target=self._loop, name="dsv-engine", daemon=True)

    # -- public API (any thread) -----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def queued(self) -> int:
        return self._waiting.qsize() + self._scores.qsize()

    def submit(self, request: GenerationRequest) -> None:
        if self.queued() >= self.config.queue_size:
            raise QueueFull(f"queue full ({self.config.queue_size} waiting)")
        self._waiting.put(request)
        REQUESTS_WAITING.set(self._waiting.qsize())
        self._wake.set()

    def submit_score(self, request: ScoreRequest) -> None:
        if self.queued() >= self.config.queue_size:
            raise QueueFull(f"queue full ({self.config.queue_size} waiting)")
        self._scores.put(request)
        self._wake.set()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the engine thread between forward passes (adapter changes go through here)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, future))
        self._wake.set()
        return future

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch = self.torch
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    self._iteration()
                except Exception as exc:  # a bug must not kill the server: fail the batch, go on
                    log.exception("engine iteration failed")
                    for seq in self._running:
                        self._finish(seq, error=exc)
                    self._running, self._cache, self._mask = [], None, None
        for seq in self._running:
            self._finish(seq, reason="cancelled")

    def _iteration(self) -> None:
        self._run_calls()
        self._drop_cancelled()
        if not self._running and self._waiting.empty() and self._scores.empty():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            return
        if not self._running and self.max_wait_s > 0 and self._waiting.qsize() < self.config.max_batch:
            # Idle engine, first arrivals: give a burst a moment to gather into one batch.
            deadline = time.perf_counter() + self.max_wait_s
            while time.perf_counter() < deadline and self._waiting.qsize() < self.config.max_batch:
                time.sleep(min(0.002, self.max_wait_s))
        if not self._scores.empty():
            self._score_batch()
        admitted = self._admit() if self._should_admit() else []
        if admitted:
            self._prefill(admitted)
        if self._running:
            self._decode_step()
        self.adapters.collect()
        REQUESTS_RUNNING.set(len(self._running))
        REQUESTS_WAITING.set(self._waiting.qsize())

    def _run_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:
                    future.set_exception(exc)

    def _should_admit(self) -> bool:
        """Join waiting requests now, or let a few more gather first?

        A prefill costs about as much as a decode step of the whole batch, whatever its size, so while
        a batch is running, arrivals are coalesced for up to ~2 decode steps (plus max_wait) unless
        they already fill every free row.
        """
        waiting = self._waiting.qsize()
        if waiting == 0:
            return False
        free = self.config.max_batch - len(self._running)
        if not self._running or waiting >= free:
            return free > 0
        try:
            oldest = self._waiting.queue[0].arrived
        except IndexError:
            return False
        return time.perf_counter() - oldest >= self.max_wait_s + 2 * self._step_seconds

    def _admit(self) -> list[_Sequence]:
        admitted = []
        while len(self._running) + len(admitted) < self.config.max_batch:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                break
            if request.cancelled.is_set():
                request.sink(Event(finish_reason="cancelled"))
                continue
            try:
                slot = self.adapters.acquire(request.adapter, request.adapter_path) if request.adapter else None
            except Exception as exc:
                log.warning("adapter %s failed to load: %s", request.adapter, exc)
                request.sink(Event(error=exc))
                continue
            generator = self.torch.Generator()
            generator.manual_seed(request.params.seed if request.params.seed is not None
                                  else int(self.torch.randint(0, 2**62, (1,)).item()))
            quotes = None
            if request.params.quote_sources:
                if self._token_bytes is None:
                    self._token_bytes = TokenBytes(self.tokenizer)
                quotes = QuoteConstraint(request.params.quote_sources, self._token_bytes)
            admitted.append(_Sequence(request, slot, generator, position=len(request.prompt_ids),
                                      last_token=-1, quotes=quotes))
        return admitted

    # -- model passes ----------------------------------------------------------------------------

    def _forward(self, input_ids, attention_mask, position_ids, rows_adapters: list[str], cache=None,
                 logits_to_keep: int = 1):
        kwargs: dict[str, Any] = {}
        if any(a != BASE for a in rows_adapters) or _is_peft(self.adapters.model):
            kwargs["adapter_names"] = rows_adapters
        return self.adapters.model(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache, use_cache=cache is not None,
                                   logits_to_keep=logits_to_keep, **kwargs)

    def _prefill(self, sequences: list[_Sequence]) -> None:
        from transformers import DynamicCache

        torch = self.torch
        prompts = [seq.request.prompt_ids for seq in sequences]
        input_ids, mask = _left_pad(torch, prompts, self.pad_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model_config)
        out = self._forward(input_ids, mask, positions, [_slot_name(s) for s in sequences], cache=cache)
        BATCH_SIZE.labels(phase="prefill").observe(len(sequences))
        for seq in sequences:
            PROMPT_TOKENS.labels(model=seq.request.model_label).inc(len(seq.request.prompt_ids))
        self._merge(sequences, out.cache, mask)
        self._sample_and_emit(sequences, out.logits[:, -1, :])

    def _decode_step(self) -> None:
        torch = self.torch
        running = self._running
        input_ids = torch.tensor([[seq.last_token] for seq in running])
        self._mask = torch.cat([self._mask, torch.ones(len(running), 1, dtype=self._mask.dtype)], dim=1)
        positions = torch.tensor([[seq.position] for seq in running])
        started = time.perf_counter()
        out = self._forward(input_ids, self._mask, positions, [_slot_name(s) for s in running], cache=self._cache)
        self._step_seconds = 0.8 * self._step_seconds + 0.2 * (time.perf_counter() - started)
        BATCH_SIZE.labels(phase="decode").observe(len(running))
        self._cache = out.cache
        for seq in running:
            seq.position += 1
        self._sample_and_emit(running, out.logits[:, -1, :])

    def _merge(self, new: list[_Sequence], new_cache, new_mask) -> None:
        """Append freshly prefilled rows to the running batch, left-padding the shorter cache."""
        torch = self.torch
        if not self._running:
            self._running, self._cache, self._mask = list(new), new_cache, new_mask
            return
        old_len, new_len = self._mask.shape[1], new_mask.shape[1]
        width = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, new_cache.layers):
            old_layer.keys = torch.cat([_pad_left(torch, old_layer.keys, width),
                                        _pad_left(torch, new_layer.keys, width)], dim=0)
            old_layer.values = torch.cat([_pad_left(torch, old_layer.values, width),
                                          _pad_left(torch, new_layer.values, width)], dim=0)
        self._mask = torch.cat([_pad_left(torch, self._mask, width, dim=1),
                                _pad_left(torch, new_mask, width, dim=1)], dim=0)
        self._running.extend(new)

    def _keep_rows(self, keep: list[int]) -> None:
        """Shrink the batch to rows ``keep`` and drop cache columns that are padding for every row."""
        torch = self.torch
        if len(keep) == len(self._running):
            return
        self._running = [self._running[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep)
        mask = self._mask.index_select(0, index)
        first_used = int((mask.sum(0) > 0).nonzero()[0].item())
        self._mask = mask[:, first_used:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first_used:, :]
            layer.values = layer.values.index_select(0, index)[:, :, first_used:, :]

    def _sample_and_emit(self, sequences: list[_Sequence], logits) -> None:
        now = time.perf_counter()
        finished: set[int] = set()
        greedy = logits.argmax(-1).tolist()  # one call for the whole batch; sampled rows redo theirs
        for row, seq in enumerate(sequences):
            params = seq.request.params
            scores = self._adjusted(seq, logits[row])
            if scores is None:
                token = greedy[row] if params.temperature <= 0.0 else _sample(self.torch, logits[row], params,
                                                                               seq.generator)
            else:
                token = _sample(self.torch, scores, params, seq.generator)
            if seq.quotes is not None:
                seq.generated_bytes += seq.quotes.table.bytes[token] or b""
            seq.last_token = token  # fed at seq.position by the next decode step
            if seq.first_token_at is None:
                seq.first_token_at = now
                TIME_TO_FIRST_TOKEN.observe(now - seq.request.arrived)
            if token in self.eos_ids and not seq.request.params.ignore_eos:
                self._finish(seq, reason="stop")
                finished.add(id(seq))
                continue
            seq.generated.append(token)
            TOKENS_GENERATED.labels(model=seq.request.model_label).inc()
            reason = self._emit_text(seq)
            if reason is None and len(seq.generated) >= seq.request.params.max_tokens:
                reason = "length"
            if reason is None and seq.position >= self.context_length:
                reason = "length"
            if reason == "stop-string":
                self._finish(seq, reason="stop", flush=False)
                finished.add(id(seq))
            elif reason is not None:
                self._finish(seq, reason=reason)
                finished.add(id(seq))
        if finished:
            self._keep_rows([i for i, s in enumerate(self._running) if id(s) not in finished])

    def _adjusted(self, seq: _Sequence, logits):
        """The row's logits after its logit_bias and quote constraint; None when neither applies."""
        torch = self.torch
        bias = seq.request.params.logit_bias
        rule = seq.quotes.next_tokens(bytes(seq.generated_bytes)) if seq.quotes is not None else None
        if not bias and rule is None:
            return None
        if bias:
            ids, values = zip(*bias)
            logits = logits.index_add(0, torch.tensor(ids, device=logits.device),
                                      torch.tensor(values, dtype=logits.dtype, device=logits.device))
        if rule is not None:
            only, ids = rule
            index = torch.tensor(ids, dtype=torch.long, device=logits.device)
            if only:
                logits = torch.full_like(logits, float("-inf")).index_fill(0, index, 0.0) + logits
            else:
                logits = logits.index_fill(0, index, float("-inf"))
        return logits

    def _emit_text(self, seq: _Sequence) -> str | None:
        """Send the new text; returns "stop-string" when a stop string appeared (text cut before it)."""
        seq.text += self._detokenize(seq)
        stops = seq.request.params.stop
        for stop in stops:
            at = seq.text.find(stop, max(0, seq.sent_chars - len(stop)))
            if at != -1:
                self._send(seq, seq.text[:at])
                return "stop-string"
        hold = max((len(s) - 1 for s in stops), default=0)  # a stop string may be arriving
        self._send(seq, seq.text[: len(seq.text) - hold] if hold else seq.text)
        return None

    def _detokenize(self, seq: _Sequence) -> str:
        """New text since the last call, decoding only a short window (O(1) per token, like TGI/vLLM).

        A byte-level token may end in the middle of a UTF-8 character (decoded as U+FFFD): then nothing
        is released until the character completes.
        """
        ids = seq.generated
        before = self.tokenizer.decode(ids[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
        after = self.tokenizer.decode(ids[seq.prefix_offset:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)
            return after[len(before):]
        return ""

    def _send(self, seq: _Sequence, text: str) -> None:
        if len(text) > seq.sent_chars:
            seq.request.sink(Event(delta=text[seq.sent_chars:]))
            seq.sent_chars = len(text)

    def _finish(self, seq: _Sequence, reason: str | None = None, error: Exception | None = None,
                flush: bool = True) -> None:
        if flush and error is None and reason in ("stop", "length"):
            # Release what was held back (a stop-string prefix that never completed, a dangling byte).
            tail = self.tokenizer.decode(seq.generated[seq.prefix_offset:], skip_special_tokens=True)
            head = self.tokenizer.decode(seq.generated[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
            seq.text += tail[len(head):]
            self._send(seq, seq.text)
        if seq.slot is not None:
            self.adapters.release(seq.slot)
            seq.slot = None
        seq.request.sink(Event(finish_reason=reason, error=error,
                               prompt_tokens=len(seq.request.prompt_ids),
                               completion_tokens=len(seq.generated)))

    def _drop_cancelled(self) -> None:
        if not self._running:
            return
        keep = []
        for i, seq in enumerate(self._running):
            if seq.request.cancelled.is_set():
                self._finish(seq, reason="cancelled")
            else:
                keep.append(i)
        self._keep_rows(keep)

    def _score_batch(self) -> None:
        """Label log-probabilities for pending score requests, with the prompt computed once.

        Pass 1 runs every prompt once (left-padded, with a cache): its last position gives each
        label's first token. Pass 2 (only for multi-token labels) feeds the rest of each label as a
        right-padded row over a copy of its prompt's cache. Compared with one (prompt + label) row
        per label, the prompt is not recomputed per label and no vocabulary projection is made for
        prompt positions.
        """
        from transformers import DynamicCache

        torch = self.torch
        batch: list[ScoreRequest] = []
        label_rows = 0
        while label_rows < self.config.max_score_rows and len(batch) < self.config.max_batch:
            try:
                request = self._scores.get_nowait()
            except queue.Empty:
                break
            batch.append(request)
            label_rows += len(request.label_ids)
        live: list[tuple[ScoreRequest, AdapterSlot | None]] = []
        for request in batch:
            try:
                slot = self.adapters.acquire(request.adapter, request.adapter_path) if request.adapter else None
                live.append((request, slot))
            except Exception as exc:
                request.future.set_exception(exc)
        try:
            if not live:
                return
            names = [slot.slot if slot else BASE for _, slot in live]
            input_ids, mask = _left_pad(torch, [request.prompt_ids for request, _ in live], self.pad_id)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=self.model_config)
            first = self._forward(input_ids, mask, positions, names, cache=cache).logits[:, -1, :]
            first = torch.log_softmax(first.float(), dim=-1)
            BATCH_SIZE.labels(phase="score").observe(len(live))
            values = [[float(first[i, label[0]]) for label in request.label_ids]
                      for i, (request, _) in enumerate(live)]

            rows = [(i, j) for i, (request, _) in enumerate(live)
                    for j, label in enumerate(request.label_ids) if len(label) > 1]
            if rows:
                owner = torch.tensor([i for i, _ in rows])
                for layer in cache.layers:
                    layer.keys = layer.keys.index_select(0, owner)
                    layer.values = layer.values.index_select(0, owner)
                labels = [live[i][0].label_ids[j] for i, j in rows]
                width = max(len(label) for label in labels) - 1
                feed = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                feed_mask = torch.zeros((len(rows), width), dtype=torch.long)
                for k, label in enumerate(labels):
                    feed[k, :len(label) - 1] = torch.tensor(label[:-1])
                    feed_mask[k, :len(label) - 1] = 1  # right padding: real positions never see it
                prompt_mask = mask.index_select(0, owner)
                feed_positions = prompt_mask.sum(1, keepdim=True) + torch.arange(width)[None, :]
                logits = self._forward(feed, torch.cat([prompt_mask, feed_mask], dim=1), feed_positions,
                                       [names[i] for i, _ in rows], cache=cache, logits_to_keep=0).logits
                BATCH_SIZE.labels(phase="score").observe(len(rows))
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                for k, ((i, j), label) in enumerate(zip(rows, labels)):
                    targets = torch.tensor(label[1:])[:, None]
                    values[i][j] += float(logprobs[k, :len(label) - 1].gather(-1, targets).sum())
            for (request, _), result in zip(live, values):
                request.future.set_result(result)
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
        finally:
            for _, slot in live:
                if slot is not None:
                    self.adapters.release(slot)


def _slot_name(seq: _Sequence) -> str:
    return seq.slot.slot if seq.slot is not None else BASE


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = ids if isinstance(ids, list) else [ids]
    ids = {i for i in ids if i is not None}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _left_pad(torch, rows: list[list[int]], pad_id: int):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _pad_left(torch, tensor, width: int, dim: int = -2):
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _sample(torch, logits, params: SamplingParams, generator) -> int:
    if params.temperature <= 0.0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(-1)
        sorted_probs[cumulative - sorted_probs > params.top_p] = 0.0  # keep the smallest nucleus
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
