"""Back-translation augmenter: text -> pivot language -> back, across several pivots.

The translator is any OpenAI-compatible chat endpoint (our ``dsv serve``, vLLM, a hosted API) reached
through ``core.client.ModelClient``; anything with a ``chat(model, messages, max_tokens=..)`` method
works. Each record yields one paraphrased copy per pivot; by default only user turns are rewritten,
so the paraphrased prompt keeps the original (trusted) assistant answer. Copies identical to the
original, or empty, are dropped and counted, never silently kept.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.finetune.data import ChatRecord

log = logging.getLogger(__name__)

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "fr": "French", "de": "German", "ja": "Japanese",
                  "es": "Spanish", "ru": "Russian", "ko": "Korean"}

PROMPT = ("Translate the following text into {language}. Reply with the translation only, "
          "without notes.\n\n{text}")


class ChatEndpoint(Protocol):
    def chat(self, model: str, messages: list[dict], *, max_tokens: int = 256, **kwargs) -> str: ...


@dataclass
class BackTranslator:
    client: ChatEndpoint
    model: str
    pivots: Sequence[str] = ("fr", "de", "ja")
    max_tokens: int = 256

    def translate(self, text: str, language: str) -> str:
        prompt = PROMPT.format(language=LANGUAGE_NAMES.get(language, language), text=text)
        return self.client.chat(self.model, [{"role": "user", "content": prompt}],
                                max_tokens=self.max_tokens).strip()

    def round_trip(self, text: str, pivot: str, source_language: str) -> str:
        return self.translate(self.translate(text, pivot), source_language)


@dataclass
class AugmentResult:
    records: list[ChatRecord]
    per_pivot: dict[str, int] = field(default_factory=dict)
    """Paraphrased records kept, per pivot language."""
    dropped_unchanged: int = 0
    dropped_empty: int = 0


def detect_language(text: str) -> str:
    """'zh' if the text is mostly CJK, else 'en' (enough to pick the language to translate back into)."""
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    letters = sum(ch.isalpha() for ch in text) or 1
    return "zh" if cjk / letters > 0.3 else "en"


def back_translate(records: Sequence[ChatRecord], translator: BackTranslator, *,
                   roles: Sequence[str] = ("user",), progress: bool = False) -> AugmentResult:
    """One paraphrase of ``records`` per pivot (the originals are not included in the result)."""
    from tqdm import tqdm

    result = AugmentResult(records=[], per_pivot={p: 0 for p in translator.pivots})
    jobs = [(r, p) for r in records for p in translator.pivots]
    for record, pivot in tqdm(jobs, desc="back-translate", disable=not progress, unit="rec"):
        messages, changed, empty = [], False, False
        for msg in record.messages:
            if msg["role"] in roles and msg["content"].strip():
                source_language = detect_language(msg["content"])
                if source_language == pivot:
                    messages.append(dict(msg))
                    continue
                text = translator.round_trip(msg["content"], pivot, source_language)
                empty |= not text
                changed |= text != msg["content"]
                messages.append({"role": msg["role"], "content": text})
            else:
                messages.append(dict(msg))
        if empty:
            result.dropped_empty += 1
        elif not changed:
            result.dropped_unchanged += 1
        else:
            result.records.append(ChatRecord(messages, f"{record.origin}#bt-{pivot}"))
            result.per_pivot[pivot] += 1
    log.info("back-translation: %d paraphrases (%s), %d unchanged, %d empty dropped",
             len(result.records), result.per_pivot, result.dropped_unchanged, result.dropped_empty)
    return result
