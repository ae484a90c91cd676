"""Grounded answers: neutralising document text so it stays DATA, citation verification, and the
labelled extractive fallback (the prompt itself is built in ``prompt.py``).

Injection safety, in three layers (a test plants an "ignore previous instructions" judgment):
1. Passages are neutralised before they reach a prompt: instruction-like sentences (English and Chinese
   patterns) are replaced by a marker, and anything that looks like our passage delimiters is escaped,
   so a document cannot close its own block and speak as the system.
2. Passages travel inside numbered ``<passage>`` blocks in the USER turn (``prompt.build_messages``); the
   system prompt (fixed, never built from retrieved text) says their content is evidence, not instructions.
3. The model's output is checked, not trusted: every ``[n]`` must name a retrieved passage and every
   statute reference must be a real article; anything else is removed and flagged. An answer left with
   no verifiable citation, or quoting text that none of its kept citations contains, is replaced by the
   extractive answer (labelled as such).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from apps.legal.chunking import sentence_pieces, split_sentences, tokenize
from apps.legal.statutes import EN_CITATION, ZH_CITATION, find_citations, lookup

_INSTRUCTION_LIKE = re.compile(
    r"(ignore|disregard|forget|override)\s+(all\s+|any\s+)?(the\s+)?(previous|prior|above|earlier|preceding|system)\s+"
    r"(instructions?|prompts?|rules?|messages?)"
    r"|you\s+are\s+now\b|new\s+instructions?\s*:|system\s+prompt|reveal\s+(your|the)\s+(prompt|instructions)"
    r"|忽略(之前|以上|先前|上述|前面)?(的)?(所有)?(指令|指示|提示|规则)|无视(之前|以上|上述)(的)?(指令|指示|规则)|你现在是",
    re.IGNORECASE)
_DELIMITER = re.compile(r"</?\s*passage[^>]*>|<\|[^>]*\|>|<｜[^｜]*｜>", re.IGNORECASE)
NEUTRALISED = "[instruction-like text removed]"
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*[,，]\s*\d{1,3})*)\]")


def neutralise(text: str) -> tuple[str, bool]:
    """Passage text safe to quote in a prompt: delimiters escaped, instruction-like sentences replaced."""
    flagged = False
    clean = _DELIMITER.sub(lambda m: m.group().replace("<", "‹").replace(">", "›"), text)
    out = []
    for sentence in sentence_pieces(clean):  # all of them, blank ones too: the text stays the passage's
        if _INSTRUCTION_LIKE.search(sentence):
            out.append(NEUTRALISED + (" " if sentence.endswith(" ") else ""))
            flagged = True
        else:
            out.append(sentence)
    return "".join(out), flagged


@dataclass
class VerifiedAnswer:
    answer: str
    citations: list[dict]
    flagged: list[dict] = field(default_factory=list)
    mode: str = "model"

    def to_json(self) -> dict:
        return {"answer": self.answer, "citations": self.citations, "flagged": self.flagged, "mode": self.mode}


def verify_citations(text: str, hits: list) -> VerifiedAnswer:
    """Keep only citations that point at a retrieved passage ([n]) or a real statute article."""
    flagged: list[dict] = []
    cited: list[int] = []

    def keep_markers(m: re.Match) -> str:
        good = []
        for part in re.split(r"\s*[,，]\s*", m.group(1)):
            n = int(part)
            if 1 <= n <= len(hits):
                good.append(n)
                if n not in cited:
                    cited.append(n)
            else:
                flagged.append({"citation": f"[{n}]", "reason": "no such retrieved passage"})
        return "".join(f"[{n}]" for n in good)

    text = _MARKER.sub(keep_markers, text)
    statute_refs: list[str] = []

    def check_statute(m: re.Match) -> str:
        key = find_citations(m.group(0))[0]
        if lookup(key) is None:
            flagged.append({"citation": m.group(0), "reason": "not a real statute article"})
            return "[unverified citation removed]"
        if key not in statute_refs:
            statute_refs.append(key)
        return m.group(0)

    text = ZH_CITATION.sub(check_statute, text)
    text = EN_CITATION.sub(check_statute, text)
    citations = [{"doc_id": hits[n - 1].doc_id, "passage": hits[n - 1].text, "score": round(float(hits[n - 1].score), 6),
                  "marker": f"[{n}]", "chunk_id": hits[n - 1].chunk_id} for n in cited]
    for key in statute_refs:
        st = lookup(key)
        citations.append({"doc_id": f"statute:{key}", "passage": st.text, "score": None, "marker": key,
                          "source": st.source})
    return VerifiedAnswer(re.sub(r"[ \t]{2,}", " ", text).strip(), citations, flagged)


_QUOTE = re.compile(r"“([^”]{6,})”|\"([^\"]{6,})\"")


def collapse_space(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def quoted_spans(text: str) -> list[str]:
    """The spans of 6+ characters between quotation marks (“…” or "…"), whitespace collapsed."""
    return [collapse_space(m.group(1) or m.group(2)) for m in _QUOTE.finditer(text)]


def unsupported_quotes(answer: VerifiedAnswer) -> list[str]:
    """Quoted spans of a model answer found in none of its kept citations (cited passages, real statute
    articles). A marker that names a retrieved passage only proves the passage exists; a quote the
    model attributes to the law or a judgment must also be in it, or the answer is not grounded (the
    tiny adapter's typical output: a valid [1] after a quote it made up)."""
    sources = [collapse_space(c["passage"]) for c in answer.citations if c.get("passage")]
    missing = []
    for quote in quoted_spans(answer.answer):
        quote = quote.rstrip("…. ")
        if len(quote) >= 6 and not any(quote in src for src in sources):
            missing.append(quote[:80])
    return missing


_TITLE = re.compile(r"《([^《》]{1,60})》")
_ANY_QUOTE = re.compile(r"“([^”]*)”|\"([^\"]*)\"")


@functools.lru_cache(maxsize=1)
def _law_titles() -> frozenset[str]:
    from apps.legal.statutes import statute_index

    return frozenset(m.group(1) for key in statute_index() for m in [_TITLE.match(key)] if m)


def grounding_problems(answer: VerifiedAnswer, hits: list) -> list[dict]:
    """Why a model answer that kept a valid [n] is still not grounded (empty list: it is). Checked on the
    verified text, after ``verify_citations`` removed what names nothing real:

    - a quote found in none of its kept citations (``unsupported_quotes``), or one too short (under 6
      characters) to check;
    - a real article the answer applies that neither a cited judgment cites (its passage text or its
      statutes) nor contains one of the answer's quotes: a real name is not evidence that it applies here;
    - a 《title》 that is no law in the statute database (a garbled name the citation pattern cannot even
      parse, e.g. "《中华人民共和国矿法》第六法》", would otherwise pass unchecked);
    - no real article left after ``verify_citations`` removed the ones it named: "依据[unverified citation
      removed][1]。" keeps a valid [1] but no claim (session 15's quote-less adapter: 16 of 40 answers);
    - an unbalanced quotation mark or 《》: a quote or title cut at one end cannot be checked
      against anything (session 22's adapter: 'GDPR of the annualer have in place, and" [1].', 3 of 40);
    - no statute article named at all: the answer's claim is which law applies (every answer the
      adapter trains on names one); 'DORA of the "to documents" [1].' quotes a passage and claims nothing
      (session 23, once its quotes were copies).

    Measured on the tiny adapter (docs/benchmarks/legal.md): with the marker and quote checks alone, 39 of
    40 answers were kept, most of them "<some real article> applies" with an empty quote."""
    problems = [{"citation": q, "reason": "quote not in any cited passage or statute"} for q in unsupported_quotes(answer)]
    for m in _ANY_QUOTE.finditer(answer.answer):
        chars = len((m.group(1) or m.group(2) or "").strip())
        if chars < 6:  # too short to check against anything: '"sha" [1]' (session 23, 'sha' out of 'shall')
            reason = "empty quote" if chars < 2 else "quote too short to check"
            problems.append({"citation": m.group(0), "reason": reason})
    cited = [hits[int(c["marker"][1:-1]) - 1] for c in answer.citations if c["marker"].startswith("[")]
    applied_in_cited = {key for h in cited for key in (*find_citations(h.text), *getattr(h, "statutes", ()))}
    quotes = quoted_spans(answer.answer)
    for c in answer.citations:
        if c["marker"].startswith("[") or c["marker"] in applied_in_cited:
            continue
        if not any(q and q in collapse_space(c["passage"]) for q in quotes):
            problems.append({"citation": c["marker"], "reason": "no cited passage applies this article"})
    titles = _law_titles()
    for m in _TITLE.finditer(answer.answer):
        if m.group(1) not in titles:
            problems.append({"citation": m.group(0), "reason": "not a law in the statute database"})
    text = answer.answer
    if text.count('"') % 2 or text.count("“") != text.count("”"):
        problems.append({"citation": text[:80], "reason": "unbalanced quotation marks"})
    outside_quotes = _ANY_QUOTE.sub("", text)  # a quote may cut a title its passage names: that is its words
    if outside_quotes.count("《") != outside_quotes.count("》"):
        problems.append({"citation": text[:80], "reason": "unbalanced law title marks"})
    unreal = [f["citation"] for f in answer.flagged if f["reason"] == "not a real statute article"]
    if all(c["marker"].startswith("[") for c in answer.citations):  # no real article kept
        if unreal:
            problems.append({"citation": unreal[0], "reason": "every article it named was removed as not real"})
        else:
            problems.append({"citation": text[:80], "reason": "names no statute article"})
    return problems


def extractive_answer(question: str, hits: list, reason: str, max_passages: int = 3,
                      lead: str | None = None) -> VerifiedAnswer:
    """No generation: the sentence of each top passage that overlaps the question most, with its marker;
    ``lead`` (a grounded answer built from a passage window, ``prompt.grounded_candidates``) goes first."""
    q = set(tokenize(question))
    parts = [lead] if lead else []
    for n, h in enumerate(hits[:max_passages], start=1):
        text, _ = neutralise(h.text)
        sentences = [s.strip() for s in split_sentences(text) if s.strip() and NEUTRALISED not in s]
        if not sentences:
            continue
        overlap, best = max(((len(q & set(tokenize(s))), s) for s in sentences), key=lambda x: x[0])
        if overlap or len(parts) == bool(lead):  # a passage sharing no term with the question adds nothing
            parts.append(f"{best} [{n}]")
    label = f"Extractive answer ({reason}; quoted from the retrieved judgments, not generated):"
    body = "\n".join(parts) if parts else "No passage the tenant may read matches the question."
    result = verify_citations(body, hits)
    result.answer = f"{label}\n{result.answer}"
    result.mode = f"extractive ({reason})"
    return result
