"""The `legal` adapter through the model server (``core.client.ModelClient``), with the fallback."""
from __future__ import annotations

import logging

from apps.legal.answer import (
    VerifiedAnswer,
    build_messages,
    extractive_answer,
    unsupported_quotes,
    verify_citations,
)

log = logging.getLogger(__name__)

# Evidence budgets, largest first: (passages - None = all retrieved, characters per passage). A served model with a small
# context window (the tiny development model: 1024 tokens) refuses the larger prompts, and the answerer
# steps down; training records for the adapter use the first budget that fits the same window
# (``prompt_budget``), so the adapter learns on prompts shaped like the ones it is served.
PROMPT_BUDGETS: tuple[tuple[int | None, int], ...] = ((None, 1200), (3, 400), (2, 150))
ANSWER_TOKENS = 256


def prompt_budget(question: str, hits: list, tokenizer, context_length: int,
                  answer_tokens: int = ANSWER_TOKENS) -> tuple[list[dict], int] | None:
    """(messages, passages used) of the first budget whose prompt leaves ``answer_tokens`` in the window,
    counted with the served chat template; None if even the smallest does not fit."""
    for n_passages, chars in PROMPT_BUDGETS:
        used = hits[:n_passages]
        messages, _ = build_messages(question, used, chars)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if len(tokenizer(text, add_special_tokens=False).input_ids) + answer_tokens <= context_length:
            return messages, len(used)
    return None


class LegalAnswerer:
    """Generate a cited answer with the `legal` adapter; verify it; fall back to extraction when needed."""

    def __init__(self, client=None, model: str = "legal", max_tokens: int = ANSWER_TOKENS,
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
        budgets = [(len(hits[:n]), chars) for n, chars in PROMPT_BUDGETS]
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
        reason = None
        if not any(c["marker"].startswith("[") for c in result.citations):
            reason = "model answer had no verifiable passage citation"
        else:
            for quote in unsupported_quotes(result):
                result.flagged.append({"citation": quote, "reason": "quote not in any cited passage or statute"})
                reason = "model answer quoted text its citations do not contain"
        if reason:
            fallback = extractive_answer(question, hits, reason)
            fallback.flagged = result.flagged + [{"citation": "", "reason": "model answer rejected",
                                                  "model_answer": text[:500]}]
            return fallback
        return result
