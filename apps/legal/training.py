"""Chat records for the `legal` adapter (`dsv legal export-training`): question + evidence -> grounded answer.

Each record is built by the served prompt builder (``prompt.build_messages`` with the budget
``prompt.fit_messages`` picks for the base model's window, as ``LegalAnswerer`` sends it) and the target
``prompt.grounded_answer``: the gold article, a quote copied from the passage window that applies it, and
that passage's [n] - an answer the verifier can check and a small model can learn by copying. Questions
whose gold article is in no shown window are skipped (no answer to learn there).

Use a knowledge base generated with another seed than the one answers are evaluated on
(bench/legal_answers.py), so the adapter is measured on judgments it has not seen.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)


def export_training_data(cfg, out, n: int = 500, seed: int = 0, model_dir=None, k: int = 4) -> int:
    """Write up to ``n`` records (fewer when questions have no supporting window); returns the count.
    ``model_dir``: the base model whose tokenizer and context window the prompts are fitted to (None =
    the largest budget, unfitted)."""
    import numpy as np

    from apps.legal.generate import make_questions
    from apps.legal.llm import ANSWER_TOKENS
    from apps.legal.pipeline import RetrievalMode, Retriever
    from apps.legal.prompt import BUDGETS, build_messages, fit_messages, grounded_answer
    from apps.legal.store import Store
    from shared.io import write_jsonl_atomic

    store = Store(cfg.sqlite_path, readonly=True)
    try:
        n_docs = store.n_docs()  # docs is a rowid table filled in order: rowids 1..n_docs
        # Twice the judgments asked for: some questions find no supporting window and are skipped.
        picks = np.random.default_rng(seed).choice(n_docs, min(n_docs, n * 2), replace=False) + 1
        rows = []
        for start in range(0, len(picks), 5000):
            ids = ",".join(map(str, picks[start:start + 5000]))
            rows += store.conn.execute(f"SELECT id, statutes FROM docs WHERE rowid IN ({ids})").fetchall()
    finally:
        store.close()
    records = [{"id": r[0], "statutes": json.loads(r[1])} for r in rows]
    questions = make_questions(records, len(records), seed=seed)
    retriever = Retriever(cfg, RetrievalMode(True, True, False), top_k=k)

    tokenizer = context = None
    if model_dir is not None:
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        context = AutoConfig.from_pretrained(str(model_dir)).max_position_embeddings

    skipped: Counter = Counter()

    def gen():
        written = 0
        for q in questions:
            if written == n:
                return
            hits = retriever.search(q["question"], k=k)
            if tokenizer is not None:
                fitted = fit_messages(q["question"], hits, tokenizer, context, ANSWER_TOKENS)
                if fitted is None:
                    skipped["prompt does not fit the window"] += 1
                    continue
                messages, evidence, _ = fitted
            else:
                messages, evidence = build_messages(q["question"], hits, BUDGETS[0])
            answer = grounded_answer(q["question"], evidence, q["gold_statute"], q["language"])
            if answer is None:
                skipped["no shown window supports the gold article"] += 1
                continue
            written += 1
            yield {"messages": messages + [{"role": "assistant", "content": answer}]}

    count = write_jsonl_atomic(Path(out), gen())
    if skipped:
        log.info("export-training: %d records; skipped %s", count, dict(skipped))
    return count
