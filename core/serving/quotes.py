"""Copy-constrained decoding: text the model puts between quotation marks must be copied verbatim from
sources the request supplies (a dsv extension, ``quote_sources``; vLLM's structured outputs play this
role for grammars and regexes, not for "a substring of these texts").

Why: a grounded answer quotes its evidence, and the tiny adapter's quotes drift after a few words
("of the Commission referred of the Commission ..."). A verifier can only reject such an answer; this
constraint keeps the model on the source while it quotes, and leaves the rest of the text to it (but
for a ” or 》 that closes nothing).

Three pairs are constrained: “…” and "…" (any substring of a source), and 《…》 (anchored: the source
must have the same 《title》, so a law is never named by half its title). A quote closes only after
``min_chars`` characters (6, what the answer verifier checks: '"sha"' supports nothing), starts and ends
on a word edge of its source, never holds its own opener (“ inside “…” means the copy ran past the
quote's end) and only opens where its source has room for ``min_chars``. Sources are numbered from 1,
and a citation marker written right after a quote ("…”[2]") must name a source that holds it.

The constraint works on bytes, so a byte-level token that ends inside a UTF-8 character (the tiny
model's 8k vocabulary spells “ as two tokens) is judged by the character it completes. When no
token can continue a quote, the constraint lets go for that step rather than stall: the answer's own
verifier still judges what comes out.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QuotePair:
    opener: bytes
    closer: bytes
    anchored: bool  # the source must contain opener + content (+ closer once closed)


_MARKER_AFTER_QUOTE = re.compile(rb"\s*\[(\d*)(\])?")  # what cites a quote: [n], right after it
PAIRS = (QuotePair("“".encode(), "”".encode(), False), QuotePair(b'"', b'"', False),
         QuotePair("《".encode(), "》".encode(), True))
_MARKS = tuple({p.opener for p in PAIRS} | {p.closer for p in PAIRS} | {b"["})
_INVALID = object()
_MARKER = object()


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character table, reversed: how byte-level BPE spells raw bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenBytes:
    """Every token id's bytes, indexed for the constraint (built once per tokenizer, then shared)."""

    def __init__(self, tokenizer):
        decoder = _byte_decoder()
        special = set(tokenizer.all_special_ids)
        self.bytes: list[bytes | None] = []
        for tid, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
            if tid in special or piece is None:
                self.bytes.append(None)  # never part of a quote
            elif all(ch in decoder for ch in piece):
                self.bytes.append(bytes(decoder[ch] for ch in piece))
            else:  # not byte-level (e.g. SentencePiece): its decoded text
                self.bytes.append(tokenizer.decode([tid]).encode("utf-8"))
        self.by_bytes: dict[bytes, list[int]] = defaultdict(list)
        for tid, data in enumerate(self.bytes):
            if data:
                self.by_bytes[data].append(tid)
        self.longest = max((len(b) for b in self.by_bytes), default=1)
        self.prefixes = {data[:n] for data in self.by_bytes for n in range(1, len(data) + 1)}
        # Tokens that may go on with a citation marker: digits, "]".
        self.marker = [tid for tid, data in enumerate(self.bytes) if data and data[:1] in b"0123456789]"]
        # Tokens that may open or close a quote contain the last byte of an opener or closer; those
        # that may start a marker contain "[".
        last = {p.opener[-1] for p in PAIRS} | {p.closer[-1] for p in PAIRS} | {ord("[")}
        self.risky = [tid for tid, data in enumerate(self.bytes) if data and any(b in last for b in data)]
        self.marked = [tid for tid in self.risky if any(mark in self.bytes[tid] for mark in _MARKS)]
        # Tokens that close a quote, per closer. A byte-level vocabulary may split ” (3 bytes) over
        # tokens, so a closer can start in one token and end in the next: both halves are indexed.
        self.closing: dict[bytes, dict[bytes, list[tuple[int, bytes]]]] = {}  # bytes before -> (id, missing)
        self.finishing: dict[bytes, list[int]] = defaultdict(list)  # the rest of a closer -> ids going on with it
        for closer in {p.closer for p in PAIRS}:
            index = self.closing[closer] = defaultdict(list)
            for tid, data in enumerate(self.bytes):
                if not data:
                    continue
                at = data.find(closer)
                if at != -1:
                    index[data[:at]].append((tid, b""))
                for k in range(1, len(closer)):
                    if data.endswith(closer[:k]):
                        index[data[:-k]].append((tid, closer[k:]))
                    if data.startswith(closer[k:]) or closer[k:].startswith(data):
                        self.finishing[closer[k:]].append(tid)


class QuoteConstraint:
    """Which next tokens keep every quote a verbatim copy of one of ``sources``."""

    def __init__(self, sources: Sequence[str], table: TokenBytes, min_chars: int = 6):
        self.sources = [s.encode("utf-8") for s in sources]  # numbered from 1, as the [n] that cite them
        self.table = table
        self.min_chars = min_chars

    def allowed(self, generated: bytes) -> list[int] | None:
        """Token ids allowed next, or None when every token is."""
        rule = self.next_tokens(generated)
        if rule is None:
            return None
        only, ids = rule
        banned = set(ids)
        return ids if only else [tid for tid in range(len(self.table.bytes)) if tid not in banned]

    def next_tokens(self, generated: bytes) -> tuple[bool, list[int]] | None:
        """The rule for the next token after ``generated``: (True, ids) only these; (False, ids) any but
        these (outside a quote, where few tokens are barred); None: any token."""
        state = self._scan(generated)
        if state is _INVALID:
            return None  # already wrong (cannot happen while the constraint held): let go
        if state is _MARKER:  # "[" right after a quote: only the numbers of sources that hold it
            return True, [tid for tid in self.table.marker if self.copies(generated + self.table.bytes[tid])]
        if state is None:
            # Only a token that writes a whole mark can go wrong here, unless the text ends in a mark's
            # first bytes (“ is two tokens in the tiny vocabulary): then any token finishing one can.
            begun = any(generated.endswith(mark[:k]) for mark in _MARKS for k in range(1, len(mark)))
            candidates = self.table.risky if begun else self.table.marked
            banned = [tid for tid in candidates if not self.copies(generated + self.table.bytes[tid])]
            return (False, banned) if banned else None
        pair, content = state
        allowed: set[int] = set()
        judged: dict[bytes, bool] = {}
        for cont in self._continuations(pair, content):
            for n in range(len(cont) + 1):
                head = cont[:n]
                if n and head not in self.table.prefixes:
                    break  # no token spells these bytes, nor any longer run of them
                for tid, missing in self.table.closing[pair.closer].get(head, ()):  # closes after them
                    if tid not in allowed and self.copies(generated + self.table.bytes[tid] + missing):
                        allowed.add(tid)
                ids = self.table.by_bytes.get(head) if n else None
                if not ids:
                    continue
                # Judged on the whole character it starts: b"\xe2\x80" may begin “ (not allowed inside
                # “…”) in one source and … in another; allowing it blindly leads to a dead end.
                piece = cont[:_char_end(cont, n)]
                if piece not in judged:
                    judged[piece] = self.copies(generated + piece)
                if judged[piece]:
                    allowed.update(ids)
        for k in range(1, len(pair.closer)):  # a closer begun by the last token: its rest
            if content.endswith(pair.closer[:k]):
                for tid in self.table.finishing[pair.closer[k:]]:
                    if self.copies(generated + self.table.bytes[tid]):
                        allowed.add(tid)
        return (True, sorted(allowed)) if allowed else None

    def copies(self, text: bytes) -> bool:
        """Is every quote in ``text`` (closed, or open at its end) a copy the constraint allows?"""
        return self._scan(text) is not _INVALID

    def _continuations(self, pair: QuotePair, content: bytes) -> set[bytes]:
        """The bytes that follow each occurrence of the open quote in a source (up to a token's length)."""
        prefix = self._held(pair, content, closed=False)
        out = set()
        for source in self.sources:
            at = source.find(prefix)
            while at != -1:
                end = at + len(prefix)
                out.add(source[end:end + self.table.longest])
                at = source.find(prefix, at + 1)
        return out

    def _scan(self, data: bytes):
        """None: no quote open at the end of ``data``; (pair, content): that quote is open; _MARKER: a
        citation marker after a quote is being written; _INVALID: a quote is not a copy, or a marker
        after one names a source that does not hold it."""
        i = 0
        while True:
            found = [(at, pair) for pair in PAIRS if (at := data.find(pair.opener, i)) != -1]
            at, pair = min(found, key=lambda f: f[0], default=(len(data), None))
            if any(p.opener != p.closer and p.closer in data[i:at] for p in PAIRS):
                return _INVALID  # a quote closed that never opened
            if pair is None:
                return None
            start = at + len(pair.opener)
            end = data.find(pair.closer, start)
            if end == -1:
                content = data[start:]
                if self._copied(pair, content, closed=False) or self._closing(pair, content):
                    return pair, content
                return _INVALID
            content = data[start:end]
            if not self._copied(pair, content, closed=True):
                return _INVALID
            i = end + len(pair.closer)
            marker = _MARKER_AFTER_QUOTE.match(data, i)
            if marker:
                held = self._held(pair, content, closed=True)
                holding = [str(n) for n, source in enumerate(self.sources, 1) if held in source]
                digits = marker.group(1).decode()
                if marker.group(2):
                    if digits not in holding:
                        return _INVALID
                elif marker.end() == len(data):
                    return _MARKER if any(n.startswith(digits) for n in holding) else _INVALID
                else:
                    return _INVALID  # "[" then no number: not a marker this constraint can check

    @staticmethod
    def _held(pair: QuotePair, content: bytes, closed: bool) -> bytes:
        """What a source must hold for this quote: its content, and for an anchored pair its marks too."""
        if not pair.anchored:
            return content
        return pair.opener + content + (pair.closer if closed else b"")

    def _closing(self, pair: QuotePair, content: bytes) -> bool:
        """Does ``content`` end in the first bytes of its closer, after a copy that may close there?"""
        return any(content.endswith(pair.closer[:k]) and self._copied(pair, content[:-k], closed=True)
                   for k in range(1, len(pair.closer)))

    def _copied(self, pair: QuotePair, content: bytes, closed: bool) -> bool:
        if pair.opener != pair.closer and pair.opener in content:
            return False  # “ inside “…”: the model copied past the quote it opened
        if content and 0x80 <= content[0] < 0xC0:
            return False  # starts inside a UTF-8 character
        if closed:
            try:
                if len(content.decode("utf-8").strip()) < self.min_chars:
                    return False
            except UnicodeDecodeError:  # ends inside a character
                return False
        if pair.anchored:
            held = self._held(pair, content, closed)
            return any(held in source for source in self.sources)
        # A quote starts, and closes, where a word of the source does: '"sha"' out of "shall" is no quote.
        # An open quote must also have room to grow to min_chars before its source ends or quotes itself:
        # "“……" copied from a window's cut mark ("……”") could never close.
        for source in self.sources:
            at = source.find(content)
            while at != -1:
                end = at + len(content)
                if _word_edge(source, at) and (_word_edge(source, end) if closed else self._room(source, at, pair)):
                    return True
                at = source.find(content, at + 1)
        return False

    def _room(self, source: bytes, at: int, pair: QuotePair) -> bool:
        """Are there min_chars characters from ``at`` before the source's next quotation mark of this pair?"""
        stop = min((i for mark in (pair.opener, pair.closer) if (i := source.find(mark, at)) != -1),
                   default=len(source))
        return len(source[at:stop].decode("utf-8", errors="ignore")) >= self.min_chars


def _char_end(text: bytes, n: int) -> int:
    """``n`` moved forward past the UTF-8 continuation bytes that finish the character it cuts."""
    while n < len(text) and 0x80 <= text[n] < 0xC0:
        n += 1
    return n


def _word_edge(text: bytes, at: int) -> bool:
    """Does no Latin word or number run across position ``at`` of ``text``? (CJK text has no such edges
    to check: any character boundary is one.)"""
    return not (0 < at < len(text) and text[at - 1:at].isalnum() and text[at:at + 1].isalnum())
