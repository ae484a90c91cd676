"""Cited answers through the real model server: how often the model's citations survive verification.

Starts ``dsv serve`` (base model + the adapters under ``--adapters-dir``) on loopback, retrieves the top 4
passages (hybrid) for generated questions from a knowledge base, and asks each model through
``ModelClient`` + ``LegalAnswerer`` - the path of ``dsv legal ask``. Per model (the ``legal`` adapter and,
as the baseline in the same run, the base model without it):

- ``model_answer_kept``: the answer kept at least one verified ``[n]`` passage citation, so the user sees
  the model's text (otherwise the labelled extractive fallback is shown);
- ``citations_removed_per_answer``: markers naming no retrieved passage and statute references that are
  not real articles, removed and flagged;
- ``kept_citation_cites_gold``: a kept ``[n]`` points at a passage whose judgment cites the gold article,
  and ``names_gold_statute``: the answer names the gold article itself (verification only checks that a
  citation EXISTS; these two check it is the right one);
- ``kept_in_trained_shape``: a kept answer is exactly the shape the adapter trains on
  (``依据<article>：“<quote>”[n]。`` / ``<article> applies: "<quote>" [n].``), nothing around or between its parts;
- ``degenerate``: the model's text (kept or rejected) repeats a phrase of 1-6 words three times in a row
  (the tiny model's loops);
- ``quote_in_passages``: the model's text (kept or rejected) quotes at least one span of 6+ characters, and
  every such quote is found word for word in a retrieved passage: it copied from its prompt, whichever
  article it then named;
- ``choice_names_gold``: does the model at least *rank* the articles right? Every grounded answer the
  shown windows support (``prompt.grounded_candidates``: one per article, verifiable by construction) is
  scored through ``/v1/score`` with the same prompt (the head ``依据<article>`` / ``<article>`` the adapter
  was trained to write) and the likeliest is checked against the gold article. Baselines in the same run,
  without any model: ``first_candidate_names_gold`` (the highest-ranked window's grounded answer: what
  ``dsv legal ask`` leads its fallback with) and ``gold_among_candidates`` (the ceiling for any choice).

The questions are ``make_questions`` over judgments sampled from the store (SYNTHETIC judgments, real
statutes); seed 7, apart from ``export-training``'s seed 0.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/legal_answers.py --kb <kb dir> --questions 40
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

_WORD = re.compile(r"\w+")
# The one answer shape the adapter trains on (``prompt.grounded_text``), whole: a kept answer can pass every
# check and still carry text between its quotes ('"single points of "s the processingal mater public" ...').
_TRAINED_SHAPE = re.compile(r'依据《[^《》“”]+》第[一二三四五六七八九十百千零]+条：“[^“”]+”\[\d+\]。'
                            r'|[A-Za-z0-9]+(?: [A-Za-z0-9]+)* Article \d+ applies: "[^"]+" \[\d+\]\.')


def loops(text: str, longest: int = 6) -> bool:
    """A phrase of 1-``longest`` words (CJK: characters) three times in a row: the tiny model's loops."""
    words = [w for token in _WORD.findall(text.lower())
             for w in (list(token) if re.search(r"[\u4e00-\u9fff]", token) else [token])]
    for n in range(1, longest + 1):
        for i in range(len(words) - 3 * n + 1):
            if words[i:i + n] == words[i + n:i + 2 * n] == words[i + 2 * n:i + 3 * n]:
                return True
    return False


def start_server(model_dir: Path, adapters_dir: Path, log_path: Path, timeout: float = 300.0):
    import httpx

    from shared.net import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "core.cli", "serve", "--model", str(model_dir), "--adapters-dir",
           str(adapters_dir), "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DSV_API_KEYS", None)
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"model server exited with {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1.0).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"model server not ready after {timeout:.0f} s; see {log_path}")


def score(q: dict, hits: list, result) -> dict:
    kept = [c for c in result.citations if c["marker"].startswith("[")]
    by_marker = {f"[{n}]": h for n, h in enumerate(hits, 1)}
    removed = [f for f in result.flagged if f["reason"] in ("no such retrieved passage", "not a real statute article")]
    generated = raw_model_text(result)
    return {"model_answer_kept": result.mode == "model",
            "citations_removed": len(removed),
            "kept_citation_cites_gold": result.mode == "model" and any(
                q["gold_statute"] in by_marker[c["marker"]].statutes for c in kept if c["marker"] in by_marker),
            "names_gold_statute": result.mode == "model" and any(
                c["marker"] == q["gold_statute"] for c in result.citations),
            "kept_in_trained_shape": result.mode == "model" and bool(_TRAINED_SHAPE.fullmatch(result.answer)),
            "degenerate": loops(generated),
            "quote_in_passages": quotes_in_passages(generated, hits)}


def quotes_in_passages(text: str, hits: list) -> bool:
    from apps.legal.answer import collapse_space, quoted_spans

    quotes = quoted_spans(text)
    passages = [collapse_space(h.text) for h in hits]
    return bool(quotes) and all(any(q in p for p in passages) for q in quotes)


def is_chinese(question: str) -> bool:
    return bool(re.search(r"[\u4e00-\u9fff]", question))


def grounded_choices(q: dict, hits: list) -> tuple[list[dict], dict[str, str]]:
    """The prompt and the grounded candidates' scoring heads (head -> article), in retrieval order."""
    from apps.legal.prompt import BUDGETS, build_messages, grounded_candidates

    messages, evidence = build_messages(q["question"], hits, BUDGETS[0])
    zh = is_chinese(q["question"])
    articles = list(grounded_candidates(q["question"], evidence, "zh" if zh else "en"))
    return messages, {(f"依据{a}" if zh else a): a for a in articles}


def candidate_baselines(q: dict, hits: list) -> dict:
    """No model: does the top-ranked window's grounded answer name the gold article; is gold among them."""
    articles = list(grounded_choices(q, hits)[1].values())
    return {"first_candidate_names_gold": bool(articles) and articles[0] == q["gold_statute"],
            "gold_among_candidates": q["gold_statute"] in articles, "candidates": len(articles)}


def model_choice_names_gold(client, model: str, q: dict, hits: list) -> bool:
    messages, heads = grounded_choices(q, hits)
    if not heads:
        return False
    probs = client.score(model, None, list(heads), messages=messages)
    return heads[max(probs, key=probs.get)] == q["gold_statute"]


def raw_model_text(result) -> str:
    """What the model generated: the answer itself, or the rejected text a fallback carries."""
    if result.mode == "model":
        return result.answer
    return next((f.get("model_answer", "") for f in result.flagged if "model_answer" in f), "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kb", type=Path, required=True, help="knowledge base directory (kb.sqlite, indexes)")
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model-dir", type=Path, default=REPO / "var" / "models" / "deepseek-tiny")
    ap.add_argument("--adapters-dir", type=Path, default=REPO / "var" / "adapters")
    ap.add_argument("--models", nargs="+", default=["legal", "deepseek-tiny"],
                    help="served model ids: the adapter first, then the baseline (the base model)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--quotes", nargs="+", choices=["copied", "free"], default=["copied", "free"],
                    help="copied: the server keeps quotes verbatim copies of the shown windows (what dsv legal "
                         "ask does); free: the model's unconstrained text. Each model is measured in each mode")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON (and examples) here")
    args = ap.parse_args(argv)

    import httpx

    from apps.legal.config import LegalConfig
    from apps.legal.generate import make_questions
    from apps.legal.llm import LegalAnswerer
    from apps.legal.pipeline import RetrievalMode, Retriever
    from apps.legal.store import Store
    from core.client import ModelClient

    cfg = LegalConfig(kb_dir=args.kb)
    store = Store(cfg.sqlite_path, readonly=True)
    n_docs = store.n_docs()
    step = max(1, n_docs // (args.questions * 4))
    docs = store.conn.execute("SELECT id, statutes FROM docs WHERE rowid % ? = ? LIMIT ?",
                              (step, args.seed % step, args.questions * 4)).fetchall()
    store.close()
    questions = make_questions([{"id": d[0], "statutes": json.loads(d[1])} for d in docs], args.questions,
                               seed=args.seed)
    retriever = Retriever(cfg, RetrievalMode(True, True, False), top_k=4)
    retriever.warm_up()
    evidence = [(q, retriever.search(q["question"], k=4)) for q in questions]

    log_path = (args.out.parent if args.out else Path("/tmp")) / "legal-answers-server.log"
    proc, url = start_server(args.model_dir, args.adapters_dir, log_path)
    result: dict = {"questions": len(questions), "synthetic_data": True, "load_avg_start": os.getloadavg()[0],
                    "retrieval_hit_in_top4": round(sum(any(q["gold_statute"] in h.statutes for h in hits)
                                                       for q, hits in evidence) / len(evidence), 3),
                    "models": {}, "examples": {}}
    baselines = [candidate_baselines(q, hits) for q, hits in evidence]
    result["no_model_baselines"] = {
        key: round(sum(b[key] for b in baselines) / len(baselines), 3)
        for key in ("first_candidate_names_gold", "gold_among_candidates", "candidates")}
    try:
        client = ModelClient(url, timeout=300.0)
        served = {m["id"] for m in httpx.get(f"{url}/models", timeout=30).json()["data"]}
        runs = [(model, mode) for model in args.models for mode in args.quotes]
        choices: dict[str, list[bool]] = {}  # the model's choice does not depend on the quote mode
        for model, mode in runs:
            label = model if mode == "copied" else f"{model}, free quotes"
            if model not in served:
                result["models"][label] = {"error": f"not served (served: {sorted(served)})"}
                continue
            answerer = LegalAnswerer(client, model=model, max_tokens=args.max_tokens, copy_quotes=mode == "copied")
            if model not in choices:
                choices[model] = [model_choice_names_gold(client, model, q, hits) for q, hits in evidence]
            rows, times = [], []
            for (q, hits), choice in zip(evidence, choices[model]):
                t = time.perf_counter()
                answer = answerer.answer(q["question"], hits)
                times.append(time.perf_counter() - t)
                rows.append({**score(q, hits, answer), "choice": choice, "mode": answer.mode,
                             "zh": is_chinese(q["question"])})
                shown = result["examples"].setdefault(f"{label}:{answer.mode.split(' ')[0]}", [])
                if len(shown) < 3:  # a few of each outcome: the model's own text, and fallbacks
                    shown.append({"question": q["question"], "gold": q["gold_statute"],
                                                      "mode": answer.mode, "answer": answer.answer[:400],
                                                      "flagged": answer.flagged[:4]})
            n = len(rows)
            result["models"][label] = {
                "model_answer_kept": round(sum(r["model_answer_kept"] for r in rows) / n, 3),
                "fallback_extractive": round(sum(not r["model_answer_kept"] for r in rows) / n, 3),
                "citations_removed_per_answer": round(sum(r["citations_removed"] for r in rows) / n, 2),
                "kept_citation_cites_gold": round(sum(r["kept_citation_cites_gold"] for r in rows) / n, 3),
                "names_gold_statute": round(sum(r["names_gold_statute"] for r in rows) / n, 3),
                "kept_in_trained_shape": round(sum(r["kept_in_trained_shape"] for r in rows) / n, 3),
                "degenerate": round(sum(r["degenerate"] for r in rows) / n, 3),
                "quote_in_passages": round(sum(r["quote_in_passages"] for r in rows) / n, 3),
                "choice_names_gold": round(sum(r["choice"] for r in rows) / n, 3),
                "seconds_per_answer_p50": round(sorted(times)[n // 2], 2),
                "kept_zh_en": [sum(r["model_answer_kept"] for r in rows if r["zh"]),
                               sum(r["model_answer_kept"] for r in rows if not r["zh"])],
                "questions_zh_en": [sum(r["zh"] for r in rows), sum(not r["zh"] for r in rows)],
                "outcomes": dict(Counter(r["mode"] for r in rows).most_common())}
            print(json.dumps({"progress": label, **result["models"][label]}), file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    adapter, base = args.models[0], args.models[-1]
    if "error" not in result["models"].get(adapter, {"error": 1}) and "error" not in result["models"].get(base, {"error": 1}):
        base_kept = result["models"][base]["model_answer_kept"]
        result["ratio_adapter_vs_base_kept"] = (
            round(result["models"][adapter]["model_answer_kept"] / base_kept, 2) if base_kept else None)
    result["load_avg_end"] = os.getloadavg()[0]
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
