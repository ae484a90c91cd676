"""Chat records (JSONL, OpenAI / LLaMA-Factory ``messages`` format) -> token ids with assistant-only labels.

A record is ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` with at least
one assistant turn. Loss is computed on assistant tokens only (prompt tokens get label -100), using the
tokenizer's chat template: the ``{% generation %}`` markers of our DeepSeek template give the assistant
mask directly; for a template without them the mask is found by rendering growing prefixes.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.io import InputError, read_jsonl

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ChatRecord:
    messages: list[dict]
    origin: str
    """``file:line`` it came from (for error messages and mixer accounting)."""


def validate_record(obj: dict, origin: str) -> ChatRecord:
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{origin}: field 'messages' must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InputError(f"{origin}: messages[{i}] must be an object with 'role' and 'content'")
        if msg.get("role") not in ROLES:
            raise InputError(f"{origin}: messages[{i}].role must be one of {', '.join(ROLES)} (got {msg.get('role')!r})")
        if not isinstance(msg.get("content"), str):
            raise InputError(f"{origin}: messages[{i}].content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise InputError(f"{origin}: no assistant turn (nothing to learn from)")
    return ChatRecord([{"role": m["role"], "content": m["content"]} for m in messages], origin)


def load_chat_jsonl(path: str | Path) -> list[ChatRecord]:
    """Read and validate every record; the first bad line raises ``InputError`` naming ``file:line``."""
    path = Path(path)
    records = []
    # read_jsonl reports malformed JSON with file:line; count lines ourselves for schema errors.
    line_numbers = _non_blank_line_numbers(path)
    for line_no, obj in zip(line_numbers, read_jsonl(path)):
        records.append(validate_record(obj, f"{path}:{line_no}"))
    if not records:
        raise InputError(f"{path}: no records")
    return records


def _non_blank_line_numbers(path: Path) -> list[int]:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        return [n for n, line in enumerate(fh, start=1) if line.strip()]


def write_chat_jsonl(path: str | Path, records: Iterable[ChatRecord | dict]) -> int:
    from shared.io import write_jsonl_atomic

    return write_jsonl_atomic(path, ({"messages": r.messages} if isinstance(r, ChatRecord) else r
                                     for r in records))


# ---------------------------------------------------------------------------------------------------
# Tokenisation


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    answer_cut: bool = False
    """max_length cut into the last assistant turn: its end (and the end-of-sequence token the model
    learns to stop on) is not trained."""
    full_length: int = 0
    """Tokens before truncation."""


def _assistant_mask_by_prefixes(tokenizer, messages: list[dict], ids: list[int]) -> list[int]:
    """Fallback for templates without ``{% generation %}``: mark the tokens each assistant turn adds."""
    mask = [0] * len(ids)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(_ids(tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True)))
        end = len(_ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True)))
        for j in range(start, min(end, len(ids))):
            mask[j] = 1
    return mask


def _ids(encoded) -> list[int]:
    # transformers v5 returns a BatchEncoding from apply_chat_template(tokenize=True); v4 a list.
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def tokenize_record(tokenizer, record: ChatRecord, max_length: int) -> TokenizedExample | None:
    """Token ids and labels (-100 outside assistant turns), truncated; None if no assistant token survives."""
    enc = tokenizer.apply_chat_template(record.messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids = list(enc["input_ids"])
    mask = list(enc.get("assistant_masks") or [])
    if not any(mask):
        mask = _assistant_mask_by_prefixes(tokenizer, record.messages, ids)
    full_length = len(ids)
    answer_cut = any(mask[max_length:])
    ids, mask = ids[:max_length], mask[:max_length]
    if not any(mask):
        return None
    return TokenizedExample(ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask)], answer_cut, full_length)


def tokenize_records(tokenizer, records: Sequence[ChatRecord], max_length: int) -> list[TokenizedExample]:
    examples = [tokenize_record(tokenizer, r, max_length) for r in records]
    dropped = sum(e is None for e in examples)
    if dropped:
        log.warning("%d of %d records have no assistant token within max_length=%d; skipped",
                    dropped, len(records), max_length)
    kept = [e for e in examples if e is not None]
    if not kept:
        raise InputError(f"no usable records (all {len(records)} truncated away at max_length={max_length})")
    cut = sum(e.answer_cut for e in kept)
    if cut:
        # Silent truncation once cost a whole adapter: 737 of 959 answers lost their end-of-sequence
        # token at max_length=192, and the model learnt to write on past its last sentence.
        log.warning("%d of %d records lose the end of their answer at max_length=%d (longest record %d tokens): "
                    "the model does not learn to stop on them; raise data.max_length",
                    cut, len(kept), max_length, max(e.full_length for e in kept))
    return kept


class ChatDataset:
    """A map-style dataset of tokenised examples (works with ``DataLoader`` and ``DistributedSampler``)."""

    def __init__(self, examples: Sequence[TokenizedExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> TokenizedExample:
        return self.examples[index]


def collate(examples: Sequence[TokenizedExample], pad_token_id: int):
    """Right-pad a batch (training needs no left padding): ``input_ids``, ``attention_mask``, ``labels``."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def split_prompt_reference(record: ChatRecord) -> tuple[list[dict], str]:
    """For evaluation: messages before the last assistant turn (the prompt) and that turn (the reference)."""
    last = max(i for i, m in enumerate(record.messages) if m["role"] == "assistant")
    return record.messages[:last], record.messages[last]["content"]
