"""Legal dashboard (Streamlit): ask a question and read the cited passages; review a contract.

Run: ``streamlit run apps/legal/dashboard.py``. It reads the knowledge base that `dsv legal service`
prepares under ``DSV_HOME/legal/kb`` (override with ``DSV_LEGAL_KB``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `streamlit run` does not install the repo

import streamlit as st

from apps.legal.config import default_config
from shared.settings import load_settings


@st.cache_resource
def _retriever(kb_dir: str, rerank: bool):
    from dataclasses import replace

    from apps.legal.pipeline import RetrievalMode, Retriever

    cfg = replace(default_config(load_settings()), kb_dir=Path(kb_dir))
    r = Retriever(cfg, RetrievalMode(rerank=rerank))
    r.warm_up()
    return r


def main() -> None:
    st.set_page_config(page_title="dsv legal", layout="wide")
    st.title("Legal research")
    settings = load_settings()
    kb_dir = os.environ.get("DSV_LEGAL_KB") or str(default_config(settings).kb_dir)
    if not (Path(kb_dir) / "kb.sqlite").exists():
        st.info(f"No knowledge base at {kb_dir} yet: start `dsv legal service` (it prepares a synthetic corpus).")
        return
    tenant = st.sidebar.selectbox("Tenant", ["public", "firm-a", "firm-b", "firm-c"])
    rerank = st.sidebar.checkbox("Re-rank with MiniLM", value=False)
    ask_tab, review_tab = st.tabs(["Ask", "Contract review"])
    with ask_tab:
        question = st.text_input("Question", placeholder="违约方应当承担什么责任？ / When must a data breach be notified?")
        if st.button("Ask", key="ask") and question.strip():
            from apps.legal.cli import make_client
            from apps.legal.llm import LegalAnswerer

            retriever = _retriever(kb_dir, rerank)
            hits = retriever.search(question, tenant=None if tenant == "public" else tenant, k=5)
            client = make_client(settings)
            result = LegalAnswerer(client, model=retriever.cfg.model).answer(question, hits)
            st.markdown(f"**Answer** ({result.mode})")
            st.write(result.answer)
            st.markdown("**Citations** - open one to read its source passage")
            for c in result.citations:
                with st.expander(f"{c['marker']} {c['doc_id']}"):
                    st.write(c["passage"])
            for f in result.flagged:
                st.warning(f"Removed / flagged: {f['citation']} - {f['reason']}")
    with review_tab:
        upload = st.file_uploader("Contract (.txt)", type=["txt"])
        text = upload.read().decode("utf-8") if upload else st.text_area("...or paste the contract", height=200)
        if st.button("Review", key="review") and text.strip():
            from apps.legal.review import ContractReviewer

            cfg = _retriever(kb_dir, False).cfg
            for f in ContractReviewer(cfg).review(text, tenant=None if tenant == "public" else tenant):
                label = "RISK" if f.risky else "ok"
                with st.expander(f"[{label}] clause {f.index}: {f.clause[:80]}", expanded=f.risky):
                    st.write(f.clause)
                    if f.risky:
                        st.markdown(f"**Why:** {'; '.join(f.reasons)}")
                        for s in f.to_json()["statutes"]:
                            st.markdown(f"**{s['key']}**: {s['text'][:300]}")
                        for p in f.precedents:
                            st.markdown(f"*Precedent* {p['doc_id']} - {p['title']}")
                        st.markdown(f"**Suggested wording:** {f.suggestion}")


main()
