"""Contract review, training-data export, the HTTP service (real subprocess) and the dashboard (AppTest)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from apps.legal.review import ContractReviewer, evaluate_review, split_clauses
from apps.legal.statutes import lookup
from shared.net import free_port

CONTRACT = """1. The Supplier shall not be liable for any damage, including death or personal injury.
2. This agreement is governed by the laws of Ireland.
3. 公司将永久保存用户的个人信息。
4. The Provider may share customer data with any third parties for marketing.
5. 逾期付款的，按未付金额每日万分之五支付违约金。"""


def test_review_flags_risky_clauses_with_real_statutes_and_accessible_precedents(legal_kb):
    cfg, _, _ = legal_kb
    assert len(split_clauses(CONTRACT)) == 5
    findings = ContractReviewer(cfg).review(CONTRACT, tenant=None)
    risky = {f.index: f for f in findings if f.risky}
    assert set(risky) == {1, 3, 4}
    assert risky[1].category == "liability_exclusion" and "《中华人民共和国民法典》第五百零六条" in risky[1].statutes
    assert all(lookup(s) for f in risky.values() for s in f.statutes)
    assert all(f.suggestion for f in risky.values())
    # Precedents are judgments applying the flagged articles, found through the same access-controlled
    # retrieval: firm-a's judgment (it cites GDPR Article 6) is a precedent for firm-a only.
    for f in risky.values():
        assert all(set(p["statutes"]) & set(f.statutes) for p in f.precedents)
    assert all(p["doc_id"] != "secret-a-1" for p in risky[4].precedents)
    as_firm_a = ContractReviewer(cfg).review(CONTRACT, tenant="firm-a")
    assert "secret-a-1" in {p["doc_id"] for p in as_firm_a[3].precedents}
    json.dumps([f.to_json() for f in findings], ensure_ascii=False)


def test_review_accuracy_is_measured_with_and_without_retrieval():
    result = evaluate_review()
    for split in ("held_out_fills", "held_out_templates", "unseen"):
        for name in ("without_retrieval", "with_retrieval"):
            acc = result[split][name]["accuracy_risky_vs_safe"]
            assert 0.0 <= acc <= 1.0
    # Wordings never used to build the reviewer: retrieval (the topic) + the statute's test must judge
    # them better than the checklist alone.
    assert (result["unseen"]["with_retrieval"]["accuracy_risky_vs_safe"]
            > result["unseen"]["without_retrieval"]["accuracy_risky_vs_safe"])


def test_statute_tests_read_the_numbers_against_the_legal_limits():
    from apps.legal.review import CATEGORY

    probation, interest, penalty = (CATEGORY[n].test for n in ("probation_too_long", "usurious_interest", "excessive_penalty"))
    # The contract term (三年) is not the probation period; 一年 before the keyword is 12 months.
    assert probation("劳动合同期限三年，试用期为二个月。") is False
    assert probation("乙方入职后需经过为期一年的考察期。") is True
    assert probation("New hires serve a probationary period of 9 months.") is True
    assert probation("Employees are on probation for the first month.") is False
    # 8 % a month is 96 % a year; 每月2分 is 2 % a month; 6 % a year is within 4x the LPR.
    assert interest("Interest accrues at 8% per month.") is True
    assert interest("借款人应按每月2分的利息支付。") is True
    assert interest("借款按年利率百分之六计息。") is False
    assert penalty("逾期付款的，按未付金额每日万分之五支付违约金。") is False
    assert penalty("乙方须赔付合同价款的6成作为违约赔偿。") is True
    assert penalty("This agreement is governed by the laws of Ireland.") is None


def test_a_safe_twin_is_not_flagged_although_its_neighbours_are_risky():
    reviewer = ContractReviewer(None)
    verdict = reviewer.judge("The loan bears interest of 4% per annum.", exclude_template=None)
    assert verdict.category is None and verdict.topic == "usurious_interest"
    assert any(e["label"] == "usurious_interest" for e in verdict.evidence)   # its twins were retrieved
    flagged = reviewer.judge("Interest accrues at 7% per month on the principal.")
    assert flagged.category == "usurious_interest" and "84 % a year" in flagged.reasons[0]  # 7 % a month


def test_export_training_data_is_valid_chat_jsonl(legal_kb, tmp_path):
    from apps.legal.training import export_training_data
    from core.finetune.data import load_chat_jsonl

    cfg, _, _ = legal_kb
    out = tmp_path / "train.jsonl"
    n = export_training_data(cfg, out, n=10)
    assert n > 0
    records = load_chat_jsonl(out)
    assert len(records) == n
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert "[" in first["messages"][2]["content"]


def test_exported_prompts_fit_the_base_models_window_and_their_answers_verify(legal_kb, tmp_path, tiny_model_dir):
    """Records fitted to the base model leave room for the answer in its context window, and every
    target is one the answerer's verifier keeps: [n] names a passage in the prompt, the article is real
    and is the one that passage's window is labelled with, and the quote is in that window."""
    import re

    from transformers import AutoConfig, AutoTokenizer

    from apps.legal.answer import unsupported_quotes, verify_citations
    from apps.legal.components import Hit
    from apps.legal.llm import ANSWER_TOKENS
    from apps.legal.statutes import lookup
    from apps.legal.training import export_training_data

    cfg, _, _ = legal_kb
    out = tmp_path / "fitted.jsonl"
    assert export_training_data(cfg, out, n=10, model_dir=tiny_model_dir) > 0
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    window = AutoConfig.from_pretrained(str(tiny_model_dir)).max_position_embeddings
    block = re.compile(r'<passage id="(\d+)"(?: article="([^"]+)")?>\n(.*?)\n</passage>', re.S)
    for line in out.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        prompt = tok.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
        assert len(tok(prompt, add_special_tokens=False).input_ids) + ANSWER_TOKENS <= window
        shown = block.findall(messages[1]["content"])
        hits = [Hit(int(n), 1.0, doc_id=f"p{n}", text=text) for n, _, text in shown]
        answer = messages[2]["content"]
        cited = [int(n) for n in re.findall(r"\[(\d+)\]", answer)]
        assert len(cited) == 1 and 1 <= cited[0] <= len(shown)
        article = shown[cited[0] - 1][1]
        assert article and lookup(article) is not None and article in answer
        verified = verify_citations(answer, hits)
        assert verified.answer == answer and not verified.flagged and unsupported_quotes(verified) == []


def test_service_prepares_a_corpus_serves_and_stops_on_sigterm(tmp_path, static_embedder_dir):
    home = tmp_path / "home"
    kb = home / "legal" / "kb"
    kb.mkdir(parents=True)
    shutil.copytree(static_embedder_dir[0], kb / "static")  # skip the MiniLM distillation step
    port = free_port()
    env = {**os.environ, "DSV_HOME": str(home), "DSV_SERVER_URL": "http://127.0.0.1:9/v1"}
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "legal", "service", "--port", str(port), "--n", "120"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        hits = httpx.get(f"http://127.0.0.1:{port}/search", params={"q": "违约责任", "k": 3}, timeout=30).json()
        assert len(hits) == 3 and all(h["doc_id"].startswith("syn-") for h in hits)
        answer = httpx.post(f"http://127.0.0.1:{port}/ask", json={"question": "违约责任如何承担？"}, timeout=60).json()
        assert answer["mode"] == "extractive (model server unavailable)" and answer["citations"]
        assert json.loads((home / "legal" / "service.json").read_text())["url"].endswith(str(port))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0


def test_dashboard_answers_with_citations_and_reviews(legal_kb, monkeypatch):
    from streamlit.testing.v1 import AppTest

    cfg, _, _ = legal_kb
    monkeypatch.setenv("DSV_LEGAL_KB", str(cfg.kb_dir))
    monkeypatch.setenv("DSV_SERVER_URL", "http://127.0.0.1:9/v1")
    app = Path(__file__).resolve().parents[2] / "apps" / "legal" / "dashboard.py"
    at = AppTest.from_file(str(app), default_timeout=120).run()
    assert not at.exception
    at.text_input[0].input("retention logs unlawful").run()
    at.button(key="ask").click().run()
    assert not at.exception
    text = " ".join(m.value for m in at.markdown)
    assert "extractive (model server unavailable)" in text
    assert any("planted-injection" in e.label for e in at.expander)
    at.text_area[0].input(CONTRACT).run()
    at.button(key="review").click().run()
    assert any(e.label.startswith("[RISK] clause 1") for e in at.expander)
