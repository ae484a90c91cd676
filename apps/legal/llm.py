"""The `legal` adapter through the model server (``core.client.ModelClient``), with the fallback.

The adapter writes with its quotes held to the shown windows (the server's ``quote_sources``, see
``core/serving/quotes.py``); its answer is shown when its citations verify and it is grounded. Otherwise the labelled
extractive answer is shown, led by the grounded answer of the highest-ranked window that supports one
(its own article, its words matching the question, its number: verifiable by construction, never
generated). Why not let the adapter choose among those grounded answers: measured by
``bench/legal_answers.py`` (its ``choice`` figures), the adapter's choice named the right article less
often than retrieval order did.
"""
from __future__ import annotations

import logging
import re

from apps.legal.answer import VerifiedAnswer, extractive_answer, grounding_problems, verify_citations
from apps.legal.prompt import BUDGETS, build_messages, grounded_candidates

log = logging.getLogger(__name__)

_CJK = re.compile(r"[\u4e00-\u9fff]")
ANSWER_TOKENS = 256  # room left for the answer when a prompt is fitted to a context window


class LegalAnswerer:
    """Generate a cited answer with the `legal` adapter; verify it; fall back to extraction when needed."""

    def __init__(self, client=None, model: str = "legal", max_tokens: int = ANSWER_TOKENS,
                 offline_reason: str = "model server unavailable", copy_quotes: bool = True):
        self.client = client          # a core.client.ModelClient, or None (server down / not configured)
        self.offline_reason = offline_reason  # label of the fallback when client is None
        self.model = model
        self.max_tokens = max_tokens
        # The server keeps whatever the model quotes a verbatim copy of a shown window (its
        # quote_sources extension); the verifier below still judges the answer as a whole.
        self.copy_quotes = copy_quotes
        self.last_messages: list[dict] | None = None  # exactly what was sent, for audit and tests
        self.last_quote_sources: list[str] | None = None

    def warm_up(self) -> None:
        pass

    def run(self, question: str, hits: list) -> dict:
        return {"answer": self.answer(question, hits)}

    def answer(self, question: str, hits: list) -> VerifiedAnswer:
        if not hits:
            return extractive_answer(question, hits, "no accessible passage retrieved")
        self.last_messages, evidence = build_messages(question, hits, BUDGETS[0])
        if self.client is None:
            return _fallback(question, hits, evidence, self.offline_reason)
        from core.client import ModelRequestError, ModelUnavailable

        # The prompt export-training fitted to the base model's window is the first budget that fits; a
        # served model with a smaller window refuses it, and the evidence shrinks the same way.
        for attempt, budget in enumerate(BUDGETS):
            messages, evidence = build_messages(question, hits, budget)
            self.last_messages = messages
            try:
                sources = self.last_quote_sources = [e.window for e in evidence] if self.copy_quotes else None
                text = self.client.chat(self.model, messages, max_tokens=self.max_tokens, temperature=0.0, seed=0,
                                        quote_sources=sources)
                break
            except ModelUnavailable as exc:
                log.warning("model server unavailable (%s): extractive fallback", exc)
                return _fallback(question, hits, evidence, "model server unavailable")
            except ModelRequestError as exc:
                if "context length" in str(exc) and attempt + 1 < len(BUDGETS):
                    continue
                log.warning("model server refused the request (%s): extractive fallback", exc)
                return _fallback(question, hits, evidence, f"model server refused the request: {exc}")
        hits = hits[:len(evidence)]
        result = verify_citations(text, hits)
        for e in evidence:
            if e.neutralised:
                result.flagged.append({"citation": f"[{e.number}]",
                                       "reason": "instruction-like text in this passage was neutralised"})
        reason = None
        if not any(c["marker"].startswith("[") for c in result.citations):
            reason = "model answer had no verifiable passage citation"
        else:
            problems = grounding_problems(result, hits)
            result.flagged.extend(problems)
            if problems:
                reason = f"model answer not grounded: {problems[0]['reason']}"
        if reason:
            fallback = _fallback(question, hits, evidence, reason)
            fallback.flagged = result.flagged + [{"citation": "", "reason": "model answer rejected",
                                                  "model_answer": text[:500]}]
            return fallback
        return result


def _fallback(question: str, hits: list, evidence: list, reason: str) -> VerifiedAnswer:
    """The extractive answer, led by the grounded answer of the highest-ranked window that supports one."""
    language = "zh" if _CJK.search(question) else "en"
    lead = next(iter(grounded_candidates(question, evidence, language).values()), None)
    return extractive_answer(question, hits, reason, lead=lead)  # [n] of the lead = rank n, as in hits
