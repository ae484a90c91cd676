"""The `legal` adapter through the model server (``core.client.ModelClient``), with the fallback."""
from __future__ import annotations

import logging

from apps.legal.answer import (
    VerifiedAnswer,
    build_messages,
    extractive_answer,
    verify_citations,
)

log = logging.getLogger(__name__)


class LegalAnswerer:
    """Generate a cited answer with the `legal` adapter; verify it; fall back to extraction when needed."""

    def __init__(self, client=None, model: str = "legal", max_tokens: int = 256,
                 offline_reason: str = "model server unavailable"):
        self.client = client          # a core.client.ModelClient, or None (server down / not configured)
        self.offline_reason = offline_reason  # label of the fallback when client is None
        self.model = model
        self.max_tokens = max_tokens
        self.last_messages: list[dict] | None = None  # exactly what was sent, for audit and tests

    def warm_up(self) -> None:
        pass

    def run(self, question: str, hits: list) -> dict:
        return {"answer": self.answer(question, hits)}

    def answer(self, question: str, hits: list) -> VerifiedAnswer:
        if not hits:
            return extractive_answer(question, hits, "no accessible passage retrieved")
        messages, neutralised = build_messages(question, hits)
        self.last_messages = messages
        if self.client is None:
            return extractive_answer(question, hits, self.offline_reason)
        from core.client import ModelRequestError, ModelUnavailable

        # Shrink the evidence until the prompt fits the served model's context window (the tiny
        # development model has 1024 tokens; a production model far more).
        budgets = [(len(hits), 1200), (min(len(hits), 3), 400), (min(len(hits), 2), 150)]
        for attempt, (n_passages, chars) in enumerate(budgets):
            messages, neutralised = build_messages(question, hits[:n_passages], chars)
            self.last_messages = messages
            try:
                text = self.client.chat(self.model, messages, max_tokens=self.max_tokens, temperature=0.0, seed=0)
                break
            except ModelUnavailable as exc:
                log.warning("model server unavailable (%s): extractive fallback", exc)
                return extractive_answer(question, hits, "model server unavailable")
            except ModelRequestError as exc:
                if "context length" in str(exc) and attempt + 1 < len(budgets):
                    continue
                log.warning("model server refused the request (%s): extractive fallback", exc)
                return extractive_answer(question, hits, f"model server refused the request: {exc}")
        hits = hits[:n_passages]
        result = verify_citations(text, hits)
        for n in neutralised:
            result.flagged.append({"citation": f"[{n}]", "reason": "instruction-like text in this passage was neutralised"})
        if not any(c["marker"].startswith("[") for c in result.citations):
            fallback = extractive_answer(question, hits, "model answer had no verifiable passage citation")
            fallback.flagged = result.flagged + [{"citation": "", "reason": "model answer rejected",
                                                  "model_answer": text[:500]}]
            return fallback
        return result
