"""Tokenisation shared by BM25 and the static embedder, and sentence-aware chunking.

One tokenizer for both languages: runs of CJK characters go through jieba (dictionary mode, no HMM, so
it is deterministic and ~2x faster), everything else is lower-cased words. Chinese sentences are
memoised: judgments repeat boilerplate and quoted statutes, and jieba is the slowest step of ingest.
"""
from __future__ import annotations

import functools
import re

_CJK_RUN = re.compile(r"[\u4e00-\u9fff]+")
_WORD = re.compile(r"[a-z0-9]+")
# Split after the terminator (and its following space) without consuming anything: "".join() == text.
_SENTENCE_END = re.compile(r"(?<=[。！？；\n])|(?<=[.!?;]\s)")
EN_STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "which", "with", "shall", "not", "be", "any", "such", "other", "where"])
ZH_STOPWORDS = frozenset(["的", "了", "和", "是", "在", "或者", "以及", "及", "与", "对", "等", "其", "之", "为", "由", "应当", "本"])


@functools.lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


@functools.lru_cache(maxsize=300_000)
def _cut_cjk(run: str) -> tuple[str, ...]:
    return tuple(t for t in _jieba().lcut(run, HMM=False) if t not in ZH_STOPWORDS)


def tokenize(text: str) -> list[str]:
    """Index/query terms for ``text`` (Chinese words via jieba, other words lower-cased)."""
    out: list[str] = []
    pos = 0
    for m in _CJK_RUN.finditer(text):
        if m.start() > pos:
            out.extend(w for w in _WORD.findall(text[pos:m.start()].lower()) if w not in EN_STOPWORDS)
        run = m.group()
        # Memoise per clause so repeated statute quotes / boilerplate are segmented once.
        out.extend(_cut_cjk(run) if len(run) <= 120 else _jieba().lcut(run, HMM=False))
        pos = m.end()
    if pos < len(text):
        out.extend(w for w in _WORD.findall(text[pos:].lower()) if w not in EN_STOPWORDS)
    return out


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s and s.strip()]


def chunk_text(text: str, max_chars: int = 700, overlap_sentences: int = 1) -> list[str]:
    """Greedy sentence packing into passages of at most ``max_chars`` (a single longer sentence is cut),
    carrying the last ``overlap_sentences`` into the next passage so a fact is not split from its context."""
    if len(text) <= max_chars:
        return [text]
    sentences: list[str] = []
    for s in split_sentences(text):
        while len(s) > max_chars:
            sentences.append(s[:max_chars])
            s = s[max_chars:]
        sentences.append(s)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for s in sentences:
        if current and size + len(s) > max_chars:
            chunks.append("".join(current).strip())
            current = current[-overlap_sentences:] if overlap_sentences else []
            size = sum(len(x) for x in current)
            if size + len(s) > max_chars:
                current, size = [], 0
        current.append(s)
        size += len(s)
    if current:
        tail = "".join(current).strip()
        if tail and (not chunks or tail not in chunks[-1]):
            chunks.append(tail)
    return chunks
